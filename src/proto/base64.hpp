// proto/base64.hpp: RFC 4648 base64, for SASL (RFC 4954) responses.
#pragma once

#include <string>
#include <string_view>

namespace inboxd::proto {

// Decodes padded base64 into out. Returns false on any other byte, or bad
// padding or length.
[[nodiscard]] bool base64_decode(std::string_view in, std::string& out);
[[nodiscard]] std::string base64_encode(std::string_view in);

}  // namespace inboxd::proto
