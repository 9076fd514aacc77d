// embed: inboxd inside an application's own libuv loop, with its own sink
// and its own recipient policy.
//
// The program starts a server on a free loopback port, sends it one message
// from a libuv client on the same loop (one recipient the policy takes, one
// it refuses), checks that the in-memory sink got it byte for byte, shuts the server down and
// checks that the loop is empty. It exits 0 on success, so it doubles as a test.
#include <uv.h>

#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inboxd/server.hpp"

namespace {

// A sink that keeps each message in memory: what an appliance might do to
// hand mail to its own code.
class memory_sink final : public inboxd::sink {
 public:
  std::vector<std::string> messages;

  inboxd::delivery* begin(const inboxd::envelope& env, inboxd::delivery_listener& l) override {
    return new memory_delivery(*this, l, env.recipients.size());
  }

 private:
  class memory_delivery final : public inboxd::delivery {
   public:
    memory_delivery(memory_sink& s, inboxd::delivery_listener& l, std::size_t n)
        : sink_(s), listener_(l), results_(n) {}
    bool write(std::string_view bytes) override {
      text_.append(bytes);
      return true;
    }
    void commit() override {
      sink_.messages.push_back(std::move(text_));
      listener_.committed(results_);
      delete this;
    }
    void abort() noexcept override { delete this; }

   private:
    ~memory_delivery() = default;
    memory_sink& sink_;
    inboxd::delivery_listener& listener_;
    std::vector<inboxd::store_outcome> results_;
    std::string text_;
  };
};

// The application's own recipient policy: it takes one address of its
// domain and refuses the rest. It writes resolve_into(), which appends to a
// list the session recycles: with string views only, it allocates nothing
// per RCPT (resolve(), with a std::vector, would be as easy to write).
class app_policy final : public inboxd::recipient_policy {
 public:
  inboxd::rcpt_verdict resolve_into(std::string_view address,
                                    inboxd::recipient_list& out) const override {
    std::size_t at = address.rfind('@');
    if (at == std::string_view::npos || address.substr(at + 1) != "example.com")
      return inboxd::rcpt_verdict::relay_denied;
    if (address.substr(0, at) != "app") return inboxd::rcpt_verdict::unknown_user;
    out.add(address, "app", "example.com");
    return inboxd::rcpt_verdict::accept;
  }
};

struct client {
  uv_tcp_t tcp{};
  uv_connect_t connect{};
  uv_write_t write{};
  std::string request =
      "EHLO embedder.example\r\n"
      "MAIL FROM:<device@example.com>\r\n"
      "RCPT TO:<app@example.com>\r\n"
      "RCPT TO:<nobody@example.com>\r\n"
      "DATA\r\n"
      "Subject: hello\r\n\r\nfrom the same loop\r\n..dot-stuffed\r\n.\r\n"
      "QUIT\r\n";
  std::string replies;
  char buf[4096];
  inboxd::server* srv = nullptr;
};

void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  auto* c = static_cast<client*>(s->data);
  if (n > 0) c->replies.append(c->buf, static_cast<std::size_t>(n));
  if (n >= 0) return;
  uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
  c->srv->shutdown([](void*) {}, nullptr);
}

void on_connect(uv_connect_t* req, int status) {
  auto* c = static_cast<client*>(req->data);
  if (status < 0) {
    std::fprintf(stderr, "embed: connect: %s\n", uv_strerror(status));
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), nullptr);
    c->srv->shutdown([](void*) {}, nullptr);
    return;
  }
  uv_buf_t b = uv_buf_init(c->request.data(), static_cast<unsigned>(c->request.size()));
  uv_write(&c->write, req->handle, &b, 1, nullptr);
  uv_read_start(
      req->handle,
      [](uv_handle_t* h, size_t, uv_buf_t* out) {
        auto* cl = static_cast<client*>(h->data);
        *out = uv_buf_init(cl->buf, sizeof cl->buf);
      },
      on_read);
}

}  // namespace

int main() {
  uv_loop_t loop;
  uv_loop_init(&loop);
  auto sink = std::make_shared<memory_sink>();
  inboxd::server_config cfg;
  cfg.listen = {"127.0.0.1:0"};
  cfg.session.hostname = "embed.test";
  cfg.policy = std::make_shared<app_policy>();
  inboxd::server srv(&loop, cfg, sink);
  std::string error;
  if (!srv.start(error)) {
    std::fprintf(stderr, "embed: %s\n", error.c_str());
    return 1;
  }
  std::string bound = srv.bound_addresses().at(0);
  int port = std::stoi(bound.substr(bound.rfind(':') + 1));

  client c;
  c.srv = &srv;
  uv_tcp_init(&loop, &c.tcp);
  c.tcp.data = &c;
  c.connect.data = &c;
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", port, &addr);
  uv_tcp_connect(&c.connect, &c.tcp, reinterpret_cast<const sockaddr*>(&addr), on_connect);

  uv_run(&loop, UV_RUN_DEFAULT);
  int closed = uv_loop_close(&loop);

  bool ok = closed == 0 && sink->messages.size() == 1 &&
            c.replies.find("250 2.0.0 Ok: queued as ") != std::string::npos &&
            c.replies.find("550 5.1.1 ") != std::string::npos &&
            c.replies.find("221 2.0.0 Bye") != std::string::npos;
  if (ok) {
    const std::string& m = sink->messages[0];
    std::string body = "Subject: hello\n\nfrom the same loop\n.dot-stuffed\n";
    ok = m.rfind("Received: from embedder.example ([127.0.0.1])", 0) == 0 &&
         m.size() > body.size() && m.compare(m.size() - body.size(), body.size(), body) == 0;
  }
  std::printf("embed: %s (loop_close=%d, messages=%zu)\n", ok ? "ok" : "FAILED", closed,
              sink->messages.size());
  if (!ok) std::fprintf(stderr, "replies:\n%s\n", c.replies.c_str());
  return ok ? 0 : 1;
}
