// proto/milter_codec.hpp: Sendmail's mail filter protocol, version 6, as
// the MTA speaks it (libmilter's mfdef.h; Postfix's milter8.c is the
// client this follows), sans I/O.
//
// Every packet is a 4-octet big-endian length, then a command octet and
// length - 1 octets of data. The encoders append one packet to a buffer;
// the decoder takes the milter's bytes as they arrive, in any split, and
// gives one reply at a time. It copies what it takes (one packet at most,
// bounded by max_packet), so the caller may drop its input at once. A
// reply's views are borrowed from the decoder until the next next() call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace inboxd::proto::milter {

// The commands we send (mfdef.h SMFIC_*).
enum class command : char {
  abort = 'A',
  body = 'B',
  connect = 'C',
  macro = 'D',
  eob = 'E',
  helo = 'H',
  header = 'L',
  mail = 'M',
  eoh = 'N',
  optneg = 'O',
  quit = 'Q',
  rcpt = 'R',
  data = 'T',
};

// The replies (mfdef.h SMFIR_*).
enum class reply_code : char {
  addrcpt = '+',
  delrcpt = '-',
  addrcpt_par = '2',
  shutdown = '4',
  accept = 'a',
  replbody = 'b',
  continue_ = 'c',
  discard = 'd',
  chgfrom = 'e',
  conn_fail = 'f',
  addheader = 'h',
  insheader = 'i',
  setsymlist = 'l',
  chgheader = 'm',
  optneg = 'O',
  progress = 'p',
  quarantine = 'q',
  reject = 'r',
  skip = 's',
  tempfail = 't',
  replycode = 'y',
};

// Actions a milter may take (SMFIF_*): negotiated in OPTNEG.
struct action {
  static constexpr std::uint32_t addhdrs = 0x01, chgbody = 0x02, addrcpt = 0x04, delrcpt = 0x08,
                                 chghdrs = 0x10, quarantine = 0x20, chgfrom = 0x40,
                                 addrcpt_par = 0x80, setsymlist = 0x100;
};

// Protocol steps (SMFIP_*): NO* skips a command, NR_* its reply.
struct step {
  static constexpr std::uint32_t noconnect = 0x1, nohelo = 0x2, nomail = 0x4, norcpt = 0x8,
                                 nobody = 0x10, nohdrs = 0x20, noeoh = 0x40, nr_hdr = 0x80,
                                 nounknown = 0x100, nodata = 0x200, skip = 0x400, rcpt_rej = 0x800,
                                 nr_conn = 0x1000, nr_helo = 0x2000, nr_mail = 0x4000,
                                 nr_rcpt = 0x8000, nr_data = 0x10000, nr_unkn = 0x20000,
                                 nr_eoh = 0x40000, nr_body = 0x80000, hdr_leadspc = 0x100000;
};

// Macro stages in OPTNEG's symbol lists (SMFIM_*).
enum class macro_stage : std::uint8_t { connect, helo, envfrom, envrcpt, data, eom, eoh };
constexpr std::size_t macro_stages = 7;

constexpr std::uint32_t version = 6;
// A body chunk is at most this (libmilter's MILTER_CHUNK_SIZE).
constexpr std::size_t chunk_size = 65535;
// The largest reply packet accepted: a body chunk (SMFIR_REPLBODY) or a
// header with its name, with room to spare. Longer is a broken milter.
constexpr std::size_t max_packet = 4 * chunk_size;

// --- Encoding (each appends one packet to out) ---

void encode(std::string& out, command cmd, std::string_view data = {});
// OPTNEG: our version, the actions we allow and the steps we can skip.
void encode_optneg(std::string& out, std::uint32_t actions, std::uint32_t steps);
// MACRO for the command `for_cmd`: name/value pairs ("j", "mx.example").
struct macro {
  std::string_view name, value;
};
void encode_macros(std::string& out, command for_cmd, std::span<const macro> macros);
// CONNECT: family '4', '6', 'L' (a unix socket) or 'U' (unknown).
void encode_connect(std::string& out, std::string_view host, char family, std::uint16_t port,
                    std::string_view address);
// MAIL and RCPT: "<address>" then each ESMTP parameter.
void encode_args(std::string& out, command cmd, std::string_view address, std::string_view params);
void encode_header(std::string& out, std::string_view name, std::string_view value);

// --- Decoding ---

struct reply {
  reply_code code = reply_code::continue_;
  // optneg: the milter's version, actions and steps.
  std::uint32_t version = 0, actions = 0, steps = 0;
  // optneg: the macros it wants per stage (empty: our defaults).
  std::string_view symlists[macro_stages] = {};
  // insheader/chgheader: the index.
  std::uint32_t index = 0;
  // replycode: the reply text; header replies: the name; addrcpt, delrcpt,
  // chgfrom: the address; quarantine: the reason; replbody: the bytes.
  std::string_view text = {};
  // header replies: the value; chgfrom, addrcpt_par: the ESMTP parameters.
  std::string_view value = {};
};

class decoder {
 public:
  enum class status : std::uint8_t { need_more, ready, error };
  // Takes octets; returns how many it took (it stops after one packet, so
  // that a reply is taken before the next arrives).
  std::size_t feed(std::string_view input);
  // ready: reply() holds a packet; call next() before feeding more.
  [[nodiscard]] status state() const noexcept { return st_; }
  [[nodiscard]] const reply& get() const noexcept { return reply_; }
  void next() noexcept;
  // Why a packet was refused (static text).
  [[nodiscard]] std::string_view error() const noexcept { return error_; }

 private:
  bool parse() noexcept;
  bool fail(std::string_view why) noexcept {
    error_ = why;
    st_ = status::error;
    return false;
  }
  std::string buf_;
  std::size_t want_ = 4;  // octets buf_ needs: the length first, then the packet
  status st_ = status::need_more;
  reply reply_;
  std::string_view error_;
};

// An address a milter gives for the envelope (CHGFROM, ADDRCPT,
// ADDRCPT_PAR): it goes into the next hop's MAIL FROM:/RCPT TO:, a
// Return-Path: and an mbox From_ line, so only a sane one is taken. One
// surrounding <> is stripped; then at most max_address octets (RFC 5321
// 4.5.3.1.3: a path is 256 with its brackets), none a control, space, DEL,
// '<' or '>'; ASCII, or well-formed UTF-8 when utf8 (the message is
// SMTPUTF8). empty_ok: "<>" (the null sender) is taken as empty. Returns
// false for anything else; address is then left alone.
constexpr std::size_t max_address = 254;
[[nodiscard]] bool envelope_address(std::string_view text, bool utf8, bool empty_ok,
                                    std::string_view& address) noexcept;

// The name of a reply code for the log ("reject", "addheader"), or "?".
[[nodiscard]] std::string_view name(reply_code code) noexcept;

}  // namespace inboxd::proto::milter

namespace inboxd::proto::milter {

// The header section of a message as a milter sees and changes it
// (Postfix's cleanup_milter.c semantics). Fed the message's first bytes
// (LF line ends), it takes the header fields up to the empty line; what
// follows is the body. The first Received field is ours: as Postfix (and
// Sendmail) do, it is not shown to the milter, and SMFIR_CHGHEADER indexes
// count without it, while SMFIR_INSHEADER positions count with it.
class header_section {
 public:
  // More header bytes than this end the section: the rest is body
  // (Postfix's header_size_limit is 102400 for one header; this bounds all).
  static constexpr std::size_t max_bytes = 1024 * 1024;

  // Takes header bytes from the front of bytes; true once the section
  // ended (bytes then holds the body's start).
  // What it took that turned out to be body (a line that is no header
  // field) is appended to body.
  bool feed(std::string_view& bytes, std::string& body);
  // The input ended inside the header section.
  void finish(std::string& body);
  [[nodiscard]] bool done() const noexcept { return done_; }

  // The fields the milter sees, in order: name and value (after the colon;
  // one leading space dropped unless leadspc, as Sendmail does).
  struct field_view {
    std::string_view name, value;
  };
  [[nodiscard]] std::vector<field_view> visible(bool leadspc) const;

  // The changes; each returns false when it was refused (too large).
  bool add(std::string_view name, std::string_view value, bool leadspc);
  bool insert(std::uint32_t index, std::string_view name, std::string_view value, bool leadspc);
  // index: the index-th field of that name (1 = the first); an empty value
  // deletes it; a missing field is added (Sendmail compatibility).
  bool change(std::uint32_t index, std::string_view name, std::string_view value, bool leadspc);

  // The header section as written out, the empty line included.
  [[nodiscard]] std::string render() const;
  [[nodiscard]] std::size_t size() const noexcept { return bytes_; }
  // What the changes cost so far: fields looked at and fields moved. A
  // change costs up to the number of fields (a search, or the shift of an
  // insert at the top), so a milter's many changes to a section of many
  // small fields would be quadratic: the caller bounds this (max_work).
  [[nodiscard]] std::size_t work() const noexcept { return work_; }
  // The memory it holds, about: the fields' text and their entries (a
  // section of many small fields costs more than its octets), for the
  // caller's memory budget.
  [[nodiscard]] std::size_t memory() const noexcept {
    return bytes_ + line_.size() + fields_.capacity() * sizeof(field);
  }
  static constexpr std::size_t max_work = 8 * 1024 * 1024;

 private:
  struct field {
    std::string text;   // "Name: value", folded lines joined by LF, no final LF
    bool ours = false;  // our Received field, hidden from the milter
  };
  bool line(std::string_view l);
  bool room(std::size_t more) const noexcept { return bytes_ + more <= 2 * max_bytes; }
  std::vector<field> fields_;
  std::string line_;  // a line not complete yet
  std::size_t bytes_ = 0;
  std::size_t work_ = 0;
  bool seen_ours_ = false;
  bool blank_ = false;  // an empty line ended the section
  bool done_ = false;
};

}  // namespace inboxd::proto::milter
