#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<harness>/.

Run from anywhere: python3 tests/fuzz/make_corpus.py. It replaces the files it
writes (seed-*) and leaves any other file (inputs libFuzzer found and someone
chose to keep) alone. Each harness reads a few control bytes before the wire
bytes; the layouts are in the comment at the top of each fuzz_<name>.cpp.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def seed(n):
    return struct.pack(">Q", (n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)


def write(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def crlf(*lines):
    return b"".join(l + b"\r\n" for l in lines)


# ---------------------------------------------------------------- line_reader
# byte 0: the limit (0 is 512; 1..127 as is; 128.. is 512 + 4 * (b - 128)); 8 seed bytes.
def line_reader():
    cases = {
        "ehlo": (0, crlf(b"EHLO client.example", b"MAIL FROM:<a@b.example>", b"QUIT")),
        "bare-lf": (0, b"EHLO a\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\r\nDATA\n"),
        "bare-cr": (0, b"HELO a\rb\r\nNOOP\r\r\n\r\n"),
        "exact-512": (0, b"NOOP " + b"x" * 505 + b"\r\n" + b"NOOP\r\n"),
        "over-512": (0, b"NOOP " + b"x" * 506 + b"\r\nQUIT\r\n"),
        "over-no-lf": (0, b"X" * 700),
        "over-then-more": (0, b"Y" * 600 + b"\r" + b"\nNOOP\r\n" + b"Z" * 10),
        "small-limit": (10, b"12345678\r\n123456789\r\n1234567\n\n\r\n"),
        "limit-1": (1, b"\n\r\nA\r\n"),
        "empty-lines": (0, b"\r\n\n\r\n\r\r\n"),
        "partial": (0, b"MAIL FROM:<a@b.example"),
        "nul-8bit": (0, b"EHLO \x00\xff\xfe\r\nNOOP \x80\r\n"),
        "cr-at-limit": (20, b"A" * 18 + b"\r\nB" * 3 + b"A" * 19 + b"\r\n"),
        "long-limit": (200, (b"W" * 800 + b"\r\n") * 3),
        "pipeline": (0, crlf(b"EHLO x", b"MAIL FROM:<>", b"RCPT TO:<postmaster>", b"DATA") + b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
    }
    for i, (name, (limit, wire)) in enumerate(cases.items()):
        write("line_reader", name, bytes([limit]) + seed(i + 1) + wire)


# -------------------------------------------------------------------- command
def command():
    lines = {
        "mail": b"MAIL FROM:<alice@example.com> SIZE=1000 BODY=8BITMIME",
        "mail-null": b"MAIL FROM:<>",
        "mail-space": b"mail from: <bob@example.org>",
        "rcpt": b"RCPT TO:<bob@example.org>",
        "rcpt-postmaster": b"RCPT TO:<Postmaster>",
        "rcpt-source-route": b"RCPT TO:<@relay.example,@b.example:user@example.com>",
        "quoted": b"TO:<\"john q. public\"@example.com>",
        "quoted-escapes": b"TO:<\"a\\\"b\\\\c\"@example.com>",
        "quoted-at": b"FROM:<\"a@b\"@example.com>",
        "ipv4": b"user@[192.0.2.1]",
        "ipv6": b"user@[IPv6:2001:db8::1]",
        "general-literal": b"user@[x-tag:some@content]",
        "literal-gt": b"a@[x:>]",
        "literal-quote": b"a@[x:\"]",
        "local-64": b"l" * 64 + b"@example.com",
        "local-65": b"l" * 65 + b"@example.com",
        "label-63": b"user@" + b"d" * 63 + b".example",
        "domain-255": b"u@" + b".".join([b"a" * 63] * 4),
        "path-256": b"TO:<" + b"u" * 60 + b"@" + b".".join([b"b" * 60] * 3) + b"." + b"c" * 10 + b">",
        "params": b"A=1 B-2=x BODY=7BIT  SIZE=  =v -K=1",
        "dots": b"a..b@example.com",
        "trailing-dot": b"a.@example.com.",
        "helo": b"EHLO  [192.0.2.1]  ",
        "tabs": b"rcpt\tTO:<a@b>",
        "verbs": b"VRFY postmaster",
        "noparam-junk": b"FROM:<a@b>junk",
        "ipv6-long": b"x@[IPv6:" + b"1:" * 40 + b"1]",
        # SMTPUTF8 (RFC 6531): UTF-8 local parts and U-labels, and broken UTF-8.
        "utf8-mail": "MAIL FROM:<jörg@münchen.example> SMTPUTF8".encode(),
        "utf8-rcpt": "RCPT TO:<用户@例子.广告>".encode(),
        "utf8-quoted": "TO:<\"é x\"@xn--mnchen-3ya.example>".encode(),
        "utf8-overlong": b"j\xc0\xafrg@example.com",
        "utf8-surrogate": b"a@\xed\xa0\x80.example",
        "utf8-truncated": b"j\xc3@example.com",
        "utf8-c1": b"a\xc2\x85b@example.com",
        "utf8-max": b"\xf4\x8f\xbf\xbf@\xf4\x90\x80\x80.example",
        "utf8-long-label": b"u@" + "ü".encode() * 40 + b".example",
    }
    for name, line in lines.items():
        write("command", name, line)


# --------------------------------------------------------------- data_decoder
# byte 0: bit 0 set means the DATA line ended in a bare LF; 8 seed bytes.
def data_decoder():
    bodies = {
        "simple": (0, b"Subject: hi\r\n\r\nHello\r\n.\r\n"),
        "empty": (0, b".\r\n"),
        "empty-after-lf": (1, b".\r\n.\r\nx\r\n.\r\n"),
        "stuffed": (0, b"..leading dot\r\n...\r\n.\r\n"),
        "smuggle-lf": (0, b"text\n.\nMAIL FROM:<evil@x>\r\n.\r\n"),
        "smuggle-mixed": (0, b"a\r\n.\nb\n.\r\nc\r.\r\nd\r\n.\r\n"),
        "smuggle-cr": (0, b"a\r.\rMAIL FROM:<e@x>\r\n.\r\n"),
        "bare-cr": (0, b"a\rb\r\r\n\r\r\n.\r\n"),
        "bare-lf": (0, b"a\nb\n\n.\r\n"),
        "two-messages": (0, b"one\r\n.\r\ntwo\r\n..\r\n.\r\n"),
        "dot-cr-tail": (0, b"line\r\n.\r"),
        "dot-tail": (0, b"line\r\n."),
        "cr-tail": (0, b"line\r"),
        "dot-cr-x": (0, b"\r\n.\rx\r\n.\r\n"),
        "long": (0, (b"x" * 1000 + b"\r\n") * 4 + b".\r\n"),
        "nul-8bit": (0, b"\x00\xff\r\n\x80.\r\n.\r\n"),
        "crcrlf": (0, b"\r\r\n.\r\n"),
        "after-bare-dot": (1, b".\r\n.\r\n"),
    }
    for i, (name, (flags, body)) in enumerate(bodies.items()):
        write("data_decoder", name, bytes([flags]) + seed(i + 100) + body)


# -------------------------------------------------------------------- session
# byte 0: bit 0 reject bare newlines; bits 1-3 size index; bits 4-6 recipient
#   index; bit 7 disconnect at the end.
# byte 1: bits 0-1 pauses; bits 2-3 commit mode; bit 4 shutdown; bit 5
#   disconnect; bit 6 IPv6; bit 7 reload.
# byte 2: bits 0-1 recipient rules.
# byte 3: bit 0 AUTH; bit 1 STARTTLS; bit 2 plaintext AUTH; bit 3 require TLS;
#   bit 4 require AUTH; bits 5-6 max AUTH failures (1, 2, 3, 1000).
SIZE = {0: 0, 1: 1, 16: 2, 100: 3, 1000: 4, 65536: 5, 10240000: 6, 300: 7}
RCPT = {0: 0, 1: 1, 2: 2, 3: 3, 5: 4, 100: 5, 1000: 6}


def control(reject=False, size=10240000, rcpts=1000, disconnect_end=False, pauses=0,
            commit=0, shutdown=False, disconnect=False, v6=False, reload=False, rules=0,
            auth=False, tls=False, plain_auth=False, need_tls=False, need_auth=False, failures=2,
            lmtp=False, dsn=False, xclient=False):
    b0 = (1 if reject else 0) | SIZE[size] << 1 | RCPT[rcpts] << 4 | (0x80 if disconnect_end else 0)
    b1 = (pauses | commit << 2 | (0x10 if shutdown else 0) | (0x20 if disconnect else 0)
          | (0x40 if v6 else 0) | (0x80 if reload else 0))
    b3 = ((1 if auth else 0) | (2 if tls else 0) | (4 if plain_auth else 0) | (8 if need_tls else 0)
          | (16 if need_auth else 0) | failures << 5 | (0x80 if dsn else 0))
    return bytes([b0, b1, rules | (4 if lmtp else 0) | (8 if xclient else 0), b3])


def tx(sender=b"<alice@example.com>", rcpts=(b"<bob@example.org>",), body=b"Subject: t\r\n\r\nhi\r\n"):
    out = b"MAIL FROM:" + sender + b"\r\n"
    for r in rcpts:
        out += b"RCPT TO:" + r + b"\r\n"
    return out + b"DATA\r\n" + body + b".\r\n"


def bdat_tx(sender=b"<alice@example.com>", rcpts=(b"<bob@example.org>",), body=b"", chunks=(b"hi\r\n",)):
    """MAIL, RCPT, then one BDAT per chunk, the last one LAST."""
    out = b"MAIL FROM:" + sender + body + b"\r\n"
    for r in rcpts:
        out += b"RCPT TO:" + r + b"\r\n"
    for i, c in enumerate(chunks):
        out += b"BDAT %d%s\r\n" % (len(c), b" LAST" if i + 1 == len(chunks) else b"") + c
    return out


def session():
    ehlo = b"EHLO client.example\r\n"
    cases = {
        "basic": (control(), ehlo + tx() + b"QUIT\r\n"),
        "helo": (control(pauses=1), b"HELO client\r\n" + tx(sender=b"<>") +
                 b"MAIL FROM:<a@b.example> SIZE=10\r\nQUIT\r\n"),
        "pipelined": (control(pauses=2, commit=1),
                      ehlo + tx(rcpts=(b"<a@x.example>", b"<b@x.example>", b"<c@x.example>"))
                      + tx(sender=b"<>", body=b"..dot\r\n.\r\n" + b"x\r\n") + b"QUIT\r\n"),
        "smuggling": (control(commit=2), ehlo + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
                      b"x\n.\nMAIL FROM:<evil@e.example>\r\nRCPT TO:<v@d.example>\r\nDATA\r\n"
                      b"smuggled\r\n.\n\r\n.\rRSET\r\n\r\n.\r\nQUIT\r\n"),
        "smuggling-reject": (control(reject=True), ehlo + tx(body=b"x\n.\nMAIL FROM:<e@x>\r\n") + b"QUIT\r\n"),
        "bare-lf-commands": (control(), b"EHLO a\nMAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\nDATA\n.\r\n.\r\nQUIT\n"),
        "bare-lf-reject": (control(reject=True), b"EHLO a\nEHLO b\r\nNOOP\r\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nbare\rcr\r\n.\r\nQUIT\r\n"),
        "long-lines": (control(pauses=3), ehlo + b"NOOP " + b"x" * 600 + b"\r\nMAIL FROM:<" + b"a" * 300 + b"@b>\r\n"
                       + tx(body=(b"y" * 2000 + b"\r\n") * 3) + b"QUIT\r\n"),
        "params": (control(size=1000), ehlo + b"MAIL FROM:<a@b.example> SIZE=999 BODY=8BITMIME\r\nRSET\r\n"
                   b"MAIL FROM:<a@b.example> SIZE=1001\r\nMAIL FROM:<a@b.example> SIZE=x\r\n"
                   b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nMAIL FROM:<a@b.example> FOO=bar\r\n"
                   b"MAIL FROM:<a@b.example> SIZE=99999999999999999999999\r\n"
                   b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\nQUIT\r\n"),
        "too-many-rcpts": (control(rcpts=2, commit=1), ehlo + tx(rcpts=(b"<a@x.example>", b"<b@x.example>", b"<c@x.example>"))
                           + b"QUIT\r\n"),
        "too-big": (control(size=100, pauses=1), ehlo + tx(body=b"z" * 150 + b"\r\n") + tx(body=b"ok\r\n") + b"QUIT\r\n"),
        "sequence": (control(), b"MAIL FROM:<a@b>\r\n" + ehlo + b"RCPT TO:<a@b.example>\r\nDATA\r\n"
                     b"MAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nRCPT TO:<bad>\r\nDATA\r\n"
                     b"RSET x\r\nRSET\r\nDATA x\r\nQUIT x\r\nQUIT\r\n"),
        "addresses": (control(pauses=1, commit=2), ehlo + tx(sender=b"<\"quoted local\"@example.com>",
                      rcpts=(b"<user@[192.0.2.1]>", b"<u@[IPv6:2001:db8::1]>", b"<x@[tag:c@d]>",
                             b"<@r1.example,@r2.example:s@example.com>", b"<Postmaster>", b" <sp@example.com>",
                             b"<\"a\\\"b\"@example.com>", b"<a..b@example.com>", b"<no-at>", b"<>"))
                      + b"QUIT\r\n"),
        "policy-domains": (control(commit=1, rules=1), ehlo + tx(rcpts=(b"<team@example.com>", b"<ALICE+tag@Example.COM>",
                           b"<nobody@example.com>", b"<x@sub.example.net>", b"<x@example.net>", b"<postmaster>",
                           b"<carol@example.com>", b"<a@elsewhere.example>")) + b"QUIT\r\n"),
        "policy-odd": (control(rules=2, pauses=2), ehlo + tx(rcpts=(b"<empty@Example.COM>",)) +
                       tx(rcpts=(b"<dup@example.com>", b"<alice@example.com>", b"<Alice@example.com>", b"<postmaster@example.com>"))
                       + b"QUIT\r\n"),
        "policy-catchall": (control(rules=3, rcpts=3), ehlo + tx(rcpts=(b"<a-b@example.org>", b"<a-c@example.org>",
                            b"<\"\"@example.org>", b"<Postmaster>", b"<x@example.com>")) + b"QUIT\r\n"),
        "empty-message": (control(commit=1, size=0), ehlo + tx(body=b"") + tx(body=b"a\r\n") + b"QUIT\r\n"),
        "misc-verbs": (control(), b"noop\r\nhelp\r\nvrfy\r\nVRFY a\r\nEXPN a\r\nSTARTTLS\r\n\r\nhelo\r\nehlo\r\n"
                       b"QUIT\r\nMAIL FROM:<a@b.example>\r\n"),
        "shutdown": (control(shutdown=True, commit=1, pauses=1), ehlo + tx() + tx() + b"NOOP\r\n" * 4 + b"QUIT\r\n"),
        "disconnect": (control(disconnect=True, commit=1, pauses=2, disconnect_end=True),
                       ehlo + tx(body=b"a\r\n" * 50) + tx(body=b"b\r\n" * 50) + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\npartial"),
        "reload": (control(reload=True, commit=2, pauses=1, v6=True), ehlo + (tx() + b"NOOP\r\n") * 6 + b"QUIT\r\n"),
        "binary": (control(pauses=1), ehlo + tx(body=bytes(range(256)) + b"\r\n") + b"\x00\xff\r\nQUIT\r\n"),
        "starttls": (control(tls=True, auth=True, need_tls=True), ehlo + b"MAIL FROM:<a@b.example>\r\nSTARTTLS\r\n"
                     b"MAIL FROM:<injected@x.example>\r\n" + ehlo + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n" + tx() + b"STARTTLS\r\nQUIT\r\n"),
        "starttls-args": (control(tls=True), ehlo + b"STARTTLS x\r\n" + b"MAIL FROM:<a@b.example>\r\nSTARTTLS\r\nRSET\r\nSTARTTLS\r\nEHLO again\r\nQUIT\r\n"),
        "auth-plain": (control(auth=True, plain_auth=True, need_auth=True, commit=1),
                       ehlo + b"MAIL FROM:<a@b.example>\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH PLAIN =\r\n" + tx() + b"QUIT\r\n"),
        "auth-plain-challenge": (control(auth=True, plain_auth=True),
                                 ehlo + b"AUTH PLAIN\r\nYWxpY2UAYWxpY2UAc2VjcmV0\r\n" + tx() + b"QUIT\r\n"),
        "auth-login": (control(auth=True, plain_auth=True, failures=3, pauses=1),
                       ehlo + b"AUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\nAUTH LOGIN YWxpY2U=\r\nc2VjcmV0\r\n" + tx() + b"QUIT\r\n"),
        "auth-failures": (control(auth=True, plain_auth=True, failures=1),
                          ehlo + b"AUTH LOGIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH CRAM-MD5\r\nAUTH PLAIN AHgAeQ==\r\nAUTH PLAIN AHgAeQ==\r\nQUIT\r\n"),
        "auth-no-tls": (control(auth=True), ehlo + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nHELO x\r\nAUTH LOGIN\r\nQUIT\r\n"),
        "many-small": (control(size=300, commit=2, pauses=1, rcpts=1),
                       ehlo + b"".join(tx(body=b"n%d\r\n" % i) for i in range(12)) + b"QUIT\r\n"),
        "smtputf8": (control(rules=1), ehlo + tx(sender="<jörg@münchen.example> SMTPUTF8".encode(),
                                               rcpts=("<用户@xn--mnchen-3ya.example>".encode(),
                                                      b"<a@\xc0\xaf.example>", b"<x@xn--a.example>"),
                                               body="Subject: Grüße\r\n\r\n你好\r\n".encode())
                     + b"MAIL FROM:<j\xc3\xb6rg@example.com>\r\nMAIL FROM:<a@b> SMTPUTF8=1\r\n"
                     b"MAIL FROM:<a@b> SMTPUTF8 SMTPUTF8\r\nQUIT\r\n"),
        # BDAT (RFC 3030): chunks split anywhere, a CRLF across two chunks,
        # BDAT 0 LAST, the next MAIL pipelined behind the chunks.
        "bdat-pipelined": (control(pauses=2, commit=2),
                           ehlo + bdat_tx(chunks=(b"Subject: b\r\n\r\n..x\r", b"\n.\r\n", b""))
                           + bdat_tx(chunks=(b"QUIT\r\n",)) + b"QUIT\r\n"),
        "bdat-binary": (control(reject=True, pauses=1),
                        ehlo + bdat_tx(body=b" BODY=BINARYMIME",
                                       chunks=(b"Subject: bin\r\n\r", b"\n" + bytes(range(256)), b"\r"))
                        + b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
                        b"BDAT 3 LAST\r\n\r\n\x00QUIT\r\n"),
        "bdat-refused": (control(), ehlo + b"BDAT 6\r\nQUIT\r\nMAIL FROM:<a@b.example>\r\nBDAT 6\r\nQUIT\r\n"
                         b"BDAT 6 LAST\r\nQUIT\r\nBDAT x\r\nBDAT 99999999999999999999\r\nBDAT 1 last\r\nxQUIT\r\n"),
        "bdat-too-big": (control(size=100, pauses=1, commit=1),
                         ehlo + bdat_tx(chunks=(b"y" * 60, b"z" * 60, b"w", b"")) + bdat_tx(chunks=(b"ok\r\n",))
                         + b"QUIT\r\n"),
        "bdat-mixing": (control(reject=True), ehlo + bdat_tx(chunks=(b"a\nb",)) +
                        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 3\r\nabcDATA\r\n"
                        b"BDAT 1 LAST\r\nxRSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                        b"BDAT 2\r\nabEHLO x\r\nBDAT 0 LAST\r\nQUIT\r\n"),
        # LMTP (RFC 2033): LHLO, a reply per accepted RCPT after DATA and
        # after BDAT LAST, HELO refused; DSN parameters with accept_dsn.
        "lmtp": (control(lmtp=True, pauses=2, commit=2, rules=1, dsn=True),
                 b"HELO x\r\nLHLO client.example\r\n"
                 + tx(rcpts=(b"<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@e.x",
                             b"<nobody@example.com>", b"<all@example.com>"))
                 + bdat_tx(rcpts=(b"<bob@example.com>", b"<carol@example.com>"),
                           chunks=(b"Subject: l\r\n\r\nx\r", b"\n"))
                 + b"MAIL FROM:<a@example.com> RET=HDRS ENVID=a+2Bb\r\nQUIT\r\n"),
        # XCLIENT (Postfix's XCLIENT_README) from a trusted client: a new 220,
        # EHLO again, the new identity in the Received header; refused in a
        # transaction and with a bad attribute.
        "xclient": (control(xclient=True, pauses=1, rules=1),
                    b"EHLO proxy.example\r\n"
                    b"XCLIENT ADDR=203.0.113.7 NAME=client.example HELO=[UNAVAILABLE]\r\n"
                    b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n"
                    b"XCLIENT ADDR=1.2.3.4\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nx\r\n.\r\n"
                    b"XCLIENT ADDR=IPV6:2001:db8::1 PROTO=ESMTP LOGIN=u+2Bv PORT=99999\r\n"
                    b"XCLIENT BOGUS=1\r\nXCLIENT ADDR=[TEMPUNAVAIL] DESTADDR=192.0.2.1 DESTPORT=25\r\n"
                    b"EHLO d\r\n" + tx(rcpts=(b"<bob@example.com>",)) + b"QUIT\r\n"),
    }
    for i, (name, (ctl, wire)) in enumerate(cases.items()):
        write("session", name, ctl + seed(i + 200) + wire)


# --------------------------------------------------------------------- mboxrd
# 8 seed bytes; one byte where the bytes are cut into two messages (0: one); the LF text.
def mboxrd():
    run = b">" * 3000
    cases = {
        "from": (0, b"From a\nx From b\n>From c\n>>From d\nFromage\n"),
        "near-misses": (0, b">Fro\nFrom\n>\n\nFrom\nFFrom x\n>F>From x\n From x\n"),
        "end-in-prefix": (0, b"a\n>>>Fro"),
        "end-in-from": (0, b"a\nFrom x"),
        "long-run-from": (0, run + b"From x\n" + run + b"\n" + run + b"Fro\n"),
        "gt-from-repeated": (0, b">From x\n" * 200),
        "cr": (0, b"\rFrom x\n\r\r\r\n>From\r\nFrom \r\n"),
        "two-messages": (128, b"x\n>>Fro" + b"m y\nFrom z\n"),
        "two-cut-in-run": (200, b"a\n" + b">" * 100 + b"From b\n"),
        "empty-lines": (0, b"\n\n\n>\n>>\n"),
        "binary": (0, bytes(range(256)) + b"\nFrom \x00\n"),
    }
    for i, (name, (cut, text)) in enumerate(cases.items()):
        write("mboxrd", name, seed(i + 400) + bytes([cut]) + text)


# ------------------------------------------------------------------ http_head
# 8 seed bytes (the sizes of the pieces the bytes arrive in); the request bytes.
def http_head():
    cases = {
        "get": b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        "http10-keep-alive": b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "close-list": b"GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n",
        "bare-lf": b"GET /metrics HTTP/1.1\nHost: x\n\n",
        "post-body": b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "pipelined": b"GET /a HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
        "folded": b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        "space-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "incomplete": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r",
        "cr-runs": b"GET / HTTP/1.1\r\r\r\n\r\r\n\n",
        "binary": bytes(range(256)) + b"\r\n\r\n",
    }
    for i, (name, wire) in enumerate(cases.items()):
        write("http_head", name, seed(i + 500) + wire)


# ---------------------------------------------------------------- proxy_header
# 8 seed bytes, then the wire: a PROXY header (v1 or v2) and what follows.
def v2(ver_cmd, family, block):
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([ver_cmd, family]) + struct.pack(">H", len(block)) + block


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def proxy_header():
    inet4 = bytes([203, 0, 113, 5, 192, 0, 2, 1]) + struct.pack(">HH", 56324, 25)
    inet6 = bytes(15) + b"\x05" + bytes(15) + b"\x01" + struct.pack(">HH", 1, 25)
    ssl = tlv(0x20, b"\x07\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_256_GCM_SHA384")
              + tlv(0x22, b"client.example"))
    cases = {
        "v1-tcp4": b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 25\r\nEHLO x\r\n",
        "v1-tcp6": b"PROXY TCP6 2001:db8::5 2001:db8::1 65535 25\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\nQUIT\r\n",
        "v1-107": b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n",
        "v1-no-lf": b"PROXY TCP4 " + b"1" * 120,
        "v2-inet4": v2(0x21, 0x11, inet4) + b"EHLO x\r\n",
        "v2-inet6": v2(0x21, 0x21, inet6),
        "v2-local": v2(0x20, 0x00, b"") + b"QUIT\r\n",
        "v2-unix": v2(0x21, 0x31, bytes(216)),
        "v2-tlvs": v2(0x21, 0x11, inet4 + tlv(0x04, b"noop") + ssl + tlv(0x02, b"mx.example")),
        "v2-crc": v2(0x21, 0x11, inet4 + tlv(0x03, bytes(4))),
        "v2-long": v2(0x21, 0x11, inet4 + tlv(0x04, bytes(1000))),
        "garbage": b"EHLO client.example\r\n",
    }
    for i, (name, data) in enumerate(sorted(cases.items())):
        write("proxy_header", name, seed(i + 500) + data)


# ---------------------------------------------------------------- pipe_command
# 8 seed bytes, then a command line (also read as a value and as stderr).


def pipe_command():
    cases = {
        "plain": b"/usr/bin/procmail -d user",
        "sh": b"sh -c 'cat > \"$OUT\"; echo done >&2'",
        "double": b'prog "a b" "x\\"y" "\\$HOME" a\\ b',
        "join": b"ab\\\ncd pre'mid'\"post\" ''",
        "open-single": b"prog 'open",
        "open-double": b'prog "open',
        "backslash-end": b"prog \\",
        "nul": b"prog\0x",
        "stderr": b"550 5.1.1 <a@b>: no such user\r\nsecond\n",
        "flood": b"x" * 3000 + b"\n",
        "utf8": "j\u00e9r\u00f4me@ex.org;$(rm -rf)".encode(),
        "words": b"w " * 70,
    }
    for i, (name, data) in enumerate(sorted(cases.items())):
        write("pipe_command", name, seed(i + 600) + data)


# ---------------------------------------------------------------- milter
# 8 seed bytes, then the milter's reply packets.


def mpacket(code, data=b""):
    return struct.pack(">I", len(data) + 1) + code + data


def milter():
    p, idx = mpacket, lambda n: struct.pack(">I", n)
    cases = {
        "optneg": p(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF) + idx(2) + b"{mail_addr} i\0") + p(b"c"),
        "eom": p(b"h", b"X-Spam\0yes\0") + p(b"i", idx(0) + b"DKIM-Signature\0 v=1; a=rsa\n\tb=x\0")
        + p(b"m", idx(1) + b"Subject\0\0") + p(b"e", b"<s@x>\0SIZE=1\0") + p(b"+", b"<r@x>\0")
        + p(b"-", b"<r@y>\0") + p(b"2", b"<r@z>\0NOTIFY=NEVER\0") + p(b"q", b"why\0") + p(b"p") + p(b"a"),
        "replycode": p(b"y", b"550 5.7.1 no\0") + p(b"t") + p(b"r") + p(b"d") + p(b"s") + p(b"4")
        + p(b"f") + p(b"l", idx(1) + b"j\0") + p(b"b", b"body\r\n"),
        "garbage": b"HTTP/1.1 400 Bad Request\r\n\r\n",
        "long": struct.pack(">I", 0x7FFFFFFF) + b"c",
        "bad": p(b"h", b"only\0") + p(b"c"),
    }
    for i, (name, data) in enumerate(sorted(cases.items())):
        write("milter", name, seed(i + 700) + data)


if __name__ == "__main__":
    line_reader()
    command()
    data_decoder()
    session()
    mboxrd()
    http_head()
    proxy_header()
    pipe_command()
    milter()
