#!/usr/bin/perl
# A milter for test_milter.py, written with Sendmail::PMilter: rejects the
# RCPT reject@..., tempfails tempfail@..., rejects a body containing
# "REJECT-BODY" with its own reply, adds X-PMilter and changes Subject at
# the end of the message, and replaces the recipient change-me@... by
# changed@... . Usage: pmilter.pl PORT
use strict;
use warnings;
use Sendmail::PMilter qw(:all);

my $port = shift or die "usage: $0 PORT\n";
my %cb = (
    envrcpt => sub {
        my ($ctx, $rcpt) = @_;
        if ($rcpt =~ /^<?reject@/i) {
            $ctx->setreply('550', '5.7.1', 'pmilter refuses this recipient');
            return SMFIS_REJECT;
        }
        return SMFIS_TEMPFAIL if $rcpt =~ /^<?tempfail@/i;
        $ctx->setpriv({}) unless $ctx->getpriv;
        $ctx->getpriv->{change} = 1 if $rcpt =~ /^<?change-me@/i;
        return SMFIS_CONTINUE;
    },
    envfrom => sub {
        my ($ctx) = @_;
        $ctx->setpriv({});
        return SMFIS_CONTINUE;
    },
    header => sub {
        my ($ctx, $name, $value) = @_;
        $ctx->getpriv->{headers} .= "$name=$value|";
        return SMFIS_CONTINUE;
    },
    body => sub {
        my ($ctx, $chunk) = @_;
        $ctx->getpriv->{body} .= $chunk;
        return SMFIS_CONTINUE;
    },
    eom => sub {
        my ($ctx) = @_;
        my $p = $ctx->getpriv;
        if (($p->{body} // '') =~ /REJECT-BODY/) {
            $ctx->setreply('554', '5.7.1', 'pmilter refuses this body');
            return SMFIS_REJECT;
        }
        my $crlf = ($p->{body} // '') =~ /\r\n/ && ($p->{body} // '') !~ /[^\r]\n/ ? 'crlf' : 'lf';
        $ctx->addheader('X-PMilter', "seen; body=$crlf; queue=" . ($ctx->getsymval('i') // 'none'));
        $ctx->chgheader('Subject', 1, 'changed by pmilter');
        if ($p->{change}) {
            $ctx->delrcpt('<change-me@example.com>');
            $ctx->addrcpt('<changed@example.com>');
        }
        return SMFIS_CONTINUE;
    },
);
my $milter = Sendmail::PMilter->new;
$milter->setconn("inet:$port\@127.0.0.1") or die "setconn failed\n";
$milter->register('inboxd-test', \%cb, SMFI_CURR_ACTS);
$| = 1;
print "ready\n";
$milter->main(10, 0);
