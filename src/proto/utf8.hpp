// proto/utf8.hpp: UTF-8 checks for SMTPUTF8 (RFC 6531, 6532).
//
// RFC 6532 3.1 takes UTF-8 from RFC 3629: no overlong forms, no surrogates,
// nothing above U+10FFFF. Addresses further hold no control characters
// (C0, DEL, C1). Each check looks at every octet once.
#pragma once

#include <string_view>

namespace inboxd::proto {

// Every octet is below 0x80.
[[nodiscard]] bool is_ascii(std::string_view s) noexcept;

// Well-formed UTF-8 (RFC 3629 4) with no C0 control, DEL or C1 control
// (U+0000-U+001F, U+007F, U+0080-U+009F).
[[nodiscard]] bool is_utf8_text(std::string_view s) noexcept;

// The length of the well-formed UTF-8 sequence at the start of s (1 to 4),
// or 0 when s does not start with one (controls are not judged here).
[[nodiscard]] std::size_t utf8_sequence(std::string_view s) noexcept;

}  // namespace inboxd::proto
