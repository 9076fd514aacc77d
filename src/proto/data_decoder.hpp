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

// The BDAT body decoder (RFC 3030): a chunk is framed by its length, so
// there is no dot-stuffing and no end-of-data to find; only line ends are
// converted, the same way data_decoder does: CRLF becomes LF, a bare LF
// stays a line end, a bare CR is kept as text, and each is noted for the
// bare-newline policy. A CRLF may be split across chunks (a CR at the end of
// one, the LF at the start of the next): the CR is held until the next byte
// decides it. For BODY=BINARYMIME only the header section is converted; from
// the empty line that ends it, every byte passes as it is (RFC 3030 3: its
// CR and LF bytes are data).
//
// decode() works in place and takes all of its input, with one exception:
// a held CR that turns out to be bare comes out alone, as out = "\r" with
// nothing consumed (output never outruns input), and the caller calls again.
// With last, the input ends the message: a CR at its end is bare and comes
// out with the rest (so that the caller's last write is one write).
class chunk_decoder {
 public:
  struct result {
    std::string_view out;  // decoded bytes (at the front of the input span, or "\r")
    std::size_t consumed;  // input bytes used up
  };

  void reset(bool binary) noexcept;
  [[nodiscard]] result decode(std::span<char> input, bool last = false) noexcept;
  // The end of the message: true when a CR was still held (the LAST chunk
  // was empty), a bare CR the caller writes as the last byte.
  [[nodiscard]] bool finish() noexcept;

  [[nodiscard]] bool saw_bare_lf() const noexcept { return bare_lf_; }
  [[nodiscard]] bool saw_bare_cr() const noexcept { return bare_cr_; }
  // BINARYMIME only: the header section has ended, bytes now pass unchanged.
  [[nodiscard]] bool in_binary_body() const noexcept { return raw_; }

 private:
  bool binary_ = false;
  bool raw_ = false;      // past the header section of a binary message
  bool at_bol_ = true;    // at the start of a line (an empty line ends the header)
  bool held_cr_ = false;  // the last byte was a CR, not decided yet
  bool bare_lf_ = false;
  bool bare_cr_ = false;
};

}  // namespace inboxd::proto
