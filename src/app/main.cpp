// The inboxd program: a thin main over libinboxd.
//
// Parses the command line, opens the sink, runs the server on the default
// libuv loop, and drains on SIGTERM/SIGINT (a second signal closes at once).
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "inboxd/server.hpp"
#include "inboxd/sinks.hpp"
#include "inboxd/version.hpp"

namespace {

struct options {
  inboxd::server_config server;
  std::string sink = "maildir";
  std::string maildir = "var/maildir";
  std::string bare_newline = "normalize";
};

std::string default_hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || !name[0]) return "localhost";
  return name;
}

// Returns the exit code to use now, or -1 to run.
int parse(int argc, char** argv, options& opt) {
  CLI::App app{"inboxd: a lightweight inbound SMTP server", "inboxd"};
  opt.server.session.hostname = default_hostname();
  std::vector<std::string> listen;
  CLI::Validator at_least_one(
      [](std::string& s) -> std::string {
        bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
        bool zero = s.find_first_not_of('0') == std::string::npos;
        return digits && !zero ? "" : "want a whole number of at least 1";
      },
      "N");
  app.add_option("--listen", listen, "ADDR:PORT to listen on, repeatable (default 127.0.0.1:2525)")
      ->type_name("ADDR:PORT");
  app.add_option("--maildir", opt.maildir, "Maildir to store into (default var/maildir)");
  app.add_option("--sink", opt.sink, "where mail goes: maildir or null")
      ->check(CLI::IsMember({"maildir", "null"}));
  app.add_option("--hostname", opt.server.session.hostname, "our name in replies and Received");
  app.add_option("--max-message-size", opt.server.session.max_message_size,
                 "in bytes (default 10240000)")
      ->check(at_least_one);
  app.add_option("--max-recipients", opt.server.session.max_recipients,
                 "per message (default 1000)")
      ->check(at_least_one);
  app.add_option("--bare-newline", opt.bare_newline, "normalize (default) or reject")
      ->check(CLI::IsMember({"normalize", "reject"}));
  app.set_version_flag("--version", std::string("inboxd ") + INBOXD_VERSION);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::CallForVersion&) {
    std::puts(app.version().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    fmt::print(stderr, "inboxd: {} (try --help)\n", what);
    return 2;
  }
  if (!listen.empty()) opt.server.listen = listen;
  if (opt.bare_newline == "reject")
    opt.server.session.bare_newline = inboxd::bare_newline_policy::reject;
  return -1;
}

struct runtime {
  inboxd::server* srv = nullptr;
  uv_signal_t sigterm{};
  uv_signal_t sigint{};
  int signals = 0;
};

void on_signal(uv_signal_t* handle, int signum) {
  auto* rt = static_cast<runtime*>(handle->data);
  if (++rt->signals == 1) {
    fmt::print(stderr, "inboxd: {}: draining\n", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    rt->srv->shutdown(
        [](void* ctx) {
          auto* r = static_cast<runtime*>(ctx);
          uv_close(reinterpret_cast<uv_handle_t*>(&r->sigterm), nullptr);
          uv_close(reinterpret_cast<uv_handle_t*>(&r->sigint), nullptr);
        },
        rt);
  } else {
    fmt::print(stderr, "inboxd: second signal: closing every connection now\n");
    rt->srv->abort();
  }
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  if (int rc = parse(argc, argv, opt); rc >= 0) return rc;
  std::signal(SIGPIPE, SIG_IGN);
  // fsync-bound deliveries wait on the thread pool; give it more than libuv's 4.
  ::setenv("UV_THREADPOOL_SIZE", "16", 0);

  uv_loop_t* loop = uv_default_loop();
  std::shared_ptr<inboxd::sink> sink;
  if (opt.sink == "null") {
    sink = std::make_unique<inboxd::null_sink>();
  } else {
    std::string error;
    sink = inboxd::open_maildir_sink(
        loop, {.path = opt.maildir, .hostname = opt.server.session.hostname}, error);
    if (!sink) {
      fmt::print(stderr, "inboxd: {}\n", error);
      return 2;
    }
  }
  inboxd::server srv(loop, opt.server, sink);
  std::string error;
  if (!srv.start(error)) {
    fmt::print(stderr, "inboxd: {}\n", error);
    uv_run(loop, UV_RUN_DEFAULT);
    return 2;
  }
  runtime rt{.srv = &srv};
  for (auto [h, sig] : {std::pair{&rt.sigterm, SIGTERM}, std::pair{&rt.sigint, SIGINT}}) {
    uv_signal_init(loop, h);
    h->data = &rt;
    uv_signal_start(h, on_signal, sig);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) fmt::print(stderr, "inboxd: loop not empty at exit: {}\n", uv_err_name(rc));
  fmt::print(stderr, "inboxd: stopped\n");
  return 0;
}
