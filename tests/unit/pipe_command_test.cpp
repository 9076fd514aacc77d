#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "proto/pipe_command.hpp"

using namespace inboxd;
using namespace inboxd::proto;

namespace {

std::vector<std::string> split(std::string_view command) {
  std::vector<std::string> words;
  std::string error;
  INFO(command);
  CHECK(split_command(command, words, error));
  CHECK(error.empty());
  return words;
}

std::string refusal(std::string_view command) {
  std::vector<std::string> words;
  std::string error;
  CHECK_FALSE(split_command(command, words, error));
  return error;
}

recipient rcpt(std::string address, std::string orcpt = {}) {
  recipient r;
  r.address = std::move(address);
  if (!orcpt.empty()) {
    r.orcpt_type = "rfc822";
    r.orcpt = std::move(orcpt);
  }
  return r;
}

}  // namespace

TEST_CASE("split_command: blanks separate words, several in a row count as one") {
  CHECK(split("/usr/bin/prog  -a\tb\nc ") ==
        std::vector<std::string>{"/usr/bin/prog", "-a", "b", "c"});
}

TEST_CASE("split_command: single quotes keep everything, backslashes and double quotes too") {
  CHECK(split("sh -c 'cat > \"$OUT\"; echo \\ done'") ==
        std::vector<std::string>{"sh", "-c", "cat > \"$OUT\"; echo \\ done"});
}

TEST_CASE("split_command: double quotes keep blanks; a backslash quotes only \" \\ $ `") {
  CHECK(split(R"(echo "a b" "x\"y" "\$HOME" "\n" "a\\b")") ==
        std::vector<std::string>{"echo", "a b", "x\"y", "$HOME", "\\n", "a\\b"});
}

TEST_CASE(
    "split_command: a backslash outside quotes keeps the next byte; before a newline it joins") {
  CHECK(split(R"(a\ b c\'d)") == std::vector<std::string>{"a b", "c'd"});
  CHECK(split("ab\\\ncd") == std::vector<std::string>{"abcd"});
}

TEST_CASE("split_command: quotes join with what touches them; an empty quote is a word") {
  CHECK(split("pre'mid'\"post\" '' x") == std::vector<std::string>{"premidpost", "", "x"});
}

TEST_CASE("split_command: nothing is expanded, no shell is implied") {
  CHECK(split("prog $HOME ~ *.txt ; | &&") ==
        std::vector<std::string>{"prog", "$HOME", "~", "*.txt", ";", "|", "&&"});
}

TEST_CASE("split_command: broken commands are refused with a reason") {
  CHECK(refusal("") == "the command is empty");
  CHECK(refusal(" \t ") == "the command is empty");
  CHECK(refusal("prog 'open") == "the command has an unterminated '");
  CHECK(refusal("prog \"open") == "the command has an unterminated \"");
  CHECK(refusal("prog \"open\\\"") == "the command has an unterminated \"");
  CHECK(refusal("prog \\") == "the command ends in a backslash");
  CHECK(refusal(std::string_view("prog\0x", 6)) == "the command holds a NUL byte");
}

TEST_CASE("split_command: bounded in length and in words") {
  std::string many;
  for (std::size_t i = 0; i < max_pipe_words; ++i) many += "w ";
  CHECK(split(many).size() == max_pipe_words);
  CHECK(refusal(many + "one-more") == "the command has more than 64 words");
  CHECK(refusal(std::string(max_pipe_command + 1, 'a')) == "the command is longer than 4096 bytes");
}

TEST_CASE("append_safe_value: Postfix's command_expansion_filter, UTF-8 only with SMTPUTF8") {
  std::string out;
  append_safe_value(out, "a.b+c-d_e=f@ex.org,x:y/z!%", false);
  CHECK(out == "a.b+c-d_e=f@ex.org,x:y/z!%");
  out.clear();
  append_safe_value(out, "a;b`c$d e'f\"g\nh\xc3\xa9", false);
  CHECK(out == "a_b_c_d_e_f_g_h__");
  out.clear();
  append_safe_value(out, "j\xc3\xa9r\xc3\xb4me;", true);
  CHECK(out == "j\xc3\xa9r\xc3\xb4me_");
}

TEST_CASE("pipe_environment: the envelope in Postfix's names, recipients once each") {
  std::vector<recipient> rcpts = {rcpt("a@ex.org"), rcpt("list@ex.org"), rcpt("list@ex.org"),
                                  rcpt("d$(rm)@ex.org")};
  envelope env;
  env.queue_id = "4Ab12";
  env.client_address = "192.0.2.1";
  env.helo = "client example";
  env.reverse_path = "s@ex.net";
  env.recipients = rcpts;
  std::vector<std::string> out;
  std::string error;
  REQUIRE(pipe_environment(env, {"PATH=/usr/bin:/bin"}, out, error));
  CHECK(out == std::vector<std::string>{"SENDER=s@ex.net",
                                        "RECIPIENTS=a@ex.org list@ex.org d__rm_@ex.org",
                                        "QUEUE_ID=4Ab12", "CLIENT_ADDRESS=192.0.2.1",
                                        "CLIENT_HELO=client_example", "PATH=/usr/bin:/bin"});
}

TEST_CASE("pipe_environment: ORIGINAL_RECIPIENT from ORCPT; an empty SENDER for <>") {
  std::vector<recipient> rcpts = {rcpt("a@ex.org", "old@ex.com")};
  envelope env;
  env.queue_id = "Q";
  env.recipients = rcpts;
  std::vector<std::string> out;
  std::string error;
  REQUIRE(pipe_environment(env, {}, out, error));
  CHECK(out == std::vector<std::string>{"SENDER=", "RECIPIENTS=a@ex.org",
                                        "ORIGINAL_RECIPIENT=old@ex.com", "QUEUE_ID=Q",
                                        "CLIENT_ADDRESS=", "CLIENT_HELO="});
}

TEST_CASE("pipe_environment: RECIPIENTS past the kernel's limit for one string is refused") {
  std::vector<recipient> rcpts;
  for (int i = 0; i < 1000; ++i)
    rcpts.push_back(rcpt(std::string(200, 'a') + std::to_string(i) + "@ex.org"));
  envelope env;
  env.recipients = rcpts;
  std::vector<std::string> out;
  std::string error;
  CHECK_FALSE(pipe_environment(env, {}, out, error));
  CHECK(error.find("recipients pass") != error.npos);
}

TEST_CASE("from_line: mbox's From_ line in UTC, MAILER-DAEMON for <>") {
  CHECK(from_line("s@ex.net", 1'796'218'849) == "From s@ex.net Wed Dec  2 13:40:49 2026\n");
  CHECK(from_line("", 0) == "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n");
  CHECK(from_line("a b@ex", 0).starts_with("From a_b@ex Thu"));
}

TEST_CASE("first_line: the first line, in any split, bounded; the rest only counted") {
  first_line f;
  f.append("550 5.1.1 no");
  f.append(" such user\r");
  f.append("\nsecond line\n");
  CHECK(f.line() == "550 5.1.1 no such user");
  CHECK(f.total() == 36);
  first_line flood;
  for (int i = 0; i < 1000; ++i) flood.append(std::string(1000, 'x'));
  CHECK(flood.line().size() == first_line::max_line);
  CHECK(flood.total() == 1'000'000);
}

TEST_CASE("exit_result: 0 stored, 75 temporary, a signal temporary, anything else permanent") {
  CHECK(exit_result(0, 0) == store_result::stored);
  CHECK(exit_result(75, 0) == store_result::temporary_fail);
  CHECK(exit_result(0, 9) == store_result::temporary_fail);
  CHECK(exit_result(1, 0) == store_result::permanent_fail);
  CHECK(exit_result(127, 0) == store_result::permanent_fail);
}

TEST_CASE("failure_text: a reply line alone (the client gets it), anything else after what") {
  CHECK(failure_text("exit status 1", "550 5.1.1 unknown") == "550 5.1.1 unknown");
  CHECK(failure_text("exit status 75", "451") == "451");
  CHECK(failure_text("exit status 1", "5500 x") == "exit status 1: 5500 x");
  CHECK(failure_text("exit status 1", "oops") == "exit status 1: oops");
  CHECK(failure_text("exit status 1", "") == "exit status 1");
}
