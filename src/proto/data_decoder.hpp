// proto/data_decoder.hpp: the DATA body decoder, in place, a line at a time.
//
// It turns the wire form of a message body into the stored form: dot-stuffing
// removed (RFC 5321 4.5.2) and every line end written as a single LF. The end
// of data is only <CRLF>.<CRLF> (RFC 5321 4.1.1.4): <LF>.<LF>, <CR>.<CR>,
// <LF>.<CRLF> and <CRLF>.<LF> never end it, so no second message can be
// smuggled behind them. A bare LF ends a line; a bare CR is kept as text; each
// is counted so that a strict policy can refuse the message.
//
// decode() writes its output over its own input (output never outruns
// input). Bytes at the end that cannot be decided yet, a CR, or a "." or
// "." CR at the start of a line, are left unconsumed: the caller passes them again,
// followed by the next bytes.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace inboxd::proto {

class data_decoder {
 public:
  struct result {
    std::string_view out;   // decoded bytes, at the front of the input span
    std::size_t consumed;   // input bytes used up, including the final <CRLF>.<CRLF>
    std::size_t line_ends;  // LFs in out: RFC 1870 counts each line end as CRLF
    bool done;              // the end of data was seen
  };

  // after_crlf: the DATA command line ended with CRLF (not a bare LF), so a
  // "." line right away ends the (empty) message.
  void reset(bool after_crlf = true) noexcept;

  [[nodiscard]] result decode(std::span<char> input) noexcept;

  [[nodiscard]] bool saw_bare_lf() const noexcept { return bare_lf_; }
  [[nodiscard]] bool saw_bare_cr() const noexcept { return bare_cr_; }

 private:
  // Between calls the decoder is at a line start or inside a line; what it
  // holds back (a CR, "." or "." CR) stays unconsumed in the caller's input.
  enum class state : unsigned char {
    bol,       // start of a line after CRLF
    bol_bare,  // start of a line after a bare LF
    text,      // inside a line
  };
  state state_ = state::bol;
  bool bare_lf_ = false;
  bool bare_cr_ = false;
};

}  // namespace inboxd::proto
