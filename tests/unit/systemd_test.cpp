// The LISTEN_FDS protocol parser (sd_listen_fds(3)) that app/systemd.cpp
// uses when built without libsystemd, and the sorting of passed sockets
// into the listen lists (by name, else by bound address).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>
#include <string>
#include <vector>

#include "app/systemd.hpp"
#include "net/listener.hpp"

using inboxd::app::inherited_socket;
using inboxd::app::parse_listen_env;

TEST_CASE("LISTEN_FDS for this pid gives descriptors 3.. with their names") {
  std::vector<inherited_socket> out;
  std::string error;
  REQUIRE(parse_listen_env(42, "42", "3", "smtp:smtps:lmtp", out, error));
  REQUIRE(out.size() == 3);
  CHECK(out[0].fd == 3);
  CHECK(out[0].name == "smtp");
  CHECK(out[1].fd == 4);
  CHECK(out[1].name == "smtps");
  CHECK(out[2].fd == 5);
  CHECK(out[2].name == "lmtp");
}

TEST_CASE("missing or empty names are unknown, extra names are ignored") {
  std::vector<inherited_socket> out;
  std::string error;
  REQUIRE(parse_listen_env(7, "7", "2", nullptr, out, error));
  REQUIRE(out.size() == 2);
  CHECK(out[0].name == "unknown");
  CHECK(out[1].name == "unknown");
  REQUIRE(parse_listen_env(7, "7", "2", ":smtp:x:y", out, error));
  REQUIRE(out.size() == 2);
  CHECK(out[0].name == "unknown");
  CHECK(out[1].name == "smtp");
}

TEST_CASE("LISTEN_FDS meant for another process, or unset, gives nothing") {
  std::vector<inherited_socket> out;
  std::string error;
  CHECK(parse_listen_env(7, "8", "2", "smtp", out, error));
  CHECK(out.empty());
  CHECK(parse_listen_env(7, nullptr, "2", "smtp", out, error));
  CHECK(out.empty());
  CHECK(parse_listen_env(7, "7", nullptr, nullptr, out, error));
  CHECK(out.empty());
}

TEST_CASE("malformed LISTEN_PID or LISTEN_FDS is an error, not a guess") {
  std::vector<inherited_socket> out;
  std::string error;
  CHECK_FALSE(parse_listen_env(7, "7x", "1", nullptr, out, error));
  CHECK(error.find("LISTEN_PID") != std::string::npos);
  CHECK_FALSE(parse_listen_env(7, "", "1", nullptr, out, error));
  CHECK_FALSE(parse_listen_env(7, "7", "-1", nullptr, out, error));
  CHECK_FALSE(parse_listen_env(7, "7", "99999999999", nullptr, out, error));
  CHECK_FALSE(parse_listen_env(7, "7", "4097", nullptr, out, error));
  CHECK(error.find("LISTEN_FDS") != std::string::npos);
  CHECK(out.empty());
}

TEST_CASE("passed sockets go to the list their name says, else the one their address is in") {
  std::string error;
  int named = inboxd::net::make_tcp_socket("127.0.0.1:0", false, error);
  int by_address = inboxd::net::make_tcp_socket("127.0.0.1:0", false, error);
  int unmatched = inboxd::net::make_tcp_socket("127.0.0.1:0", false, error);
  REQUIRE(named >= 0);
  REQUIRE(by_address >= 0);
  REQUIRE(unmatched >= 0);
  std::string port = inboxd::net::socket_address(by_address);
  port = port.substr(port.rfind(':'));
  inboxd::server_config cfg;
  cfg.listen = {"127.0.0.1:2525"};
  cfg.listen_lmtp = {"0.0.0.0" + port};  // a wildcard matches any address with that port
  std::vector<std::string> notes;
  REQUIRE(inboxd::app::assign_sockets(
      {{named, "submissions"}, {by_address, "inboxd.socket"}, {unmatched, "unknown"}}, cfg, notes,
      error));
  CHECK(cfg.listen == std::vector<std::string>{"fd:" + std::to_string(unmatched)});
  CHECK(cfg.listen_tls == std::vector<std::string>{"fd:" + std::to_string(named)});
  CHECK(cfg.listen_lmtp == std::vector<std::string>{"fd:" + std::to_string(by_address)});
  REQUIRE(notes.size() == 1);  // the unmatched one is plain SMTP, and the log says so
  CHECK(notes[0].find("plain SMTP") != std::string::npos);
  for (int fd : {named, by_address, unmatched}) ::close(fd);
}

TEST_CASE("a passed descriptor that is not a socket is refused") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  inboxd::server_config cfg;
  std::vector<std::string> notes;
  std::string error;
  CHECK_FALSE(inboxd::app::assign_sockets({{fds[0], "smtp"}}, cfg, notes, error));
  CHECK(error.find("not a TCP or unix socket") != std::string::npos);
  ::close(fds[0]);
  ::close(fds[1]);
}
