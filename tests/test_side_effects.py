"""Side-effect guards: executed in the serving run, recorded (not executed) in the shadow run.

A host package ``host_<n>.mail`` holds guarded functions with counters that prove what ran;
both versions call it. Differences in what the two versions would have done ("new sends 2
emails where old sent 1") are reported as ``$side_effects[...]`` divergences.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import wrapt
from shadow_helpers import Lab, route_report

import dualrun
from dualrun.compare import Differ
from dualrun.sideeffects import Run, current_run, diff_side_effects


@pytest.fixture(scope="module", autouse=True)
def wrapt_import_hook_finder() -> None:
    """wrapt puts its import-hook finder on ``sys.meta_path`` once per process, the first time
    a post-import hook is registered; install it before conftest.py's per-test snapshot."""
    wrapt.register_post_import_hook(lambda module: None, "wrapt")  # imported: runs at once


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


MAIL = """
import dualrun

SENT = []
SMS = []
CHARGED = []
FAKED = []
PLAIN = []
MAILED = []


@dualrun.side_effect
def send_email(to, subject=""):
    SENT.append((to, subject))
    return f"sent-{len(SENT)}"


@dualrun.side_effect(name="sms", returns="sms-fake")
def send_sms(number):
    SMS.append(number)
    return "sms-real"


def _fake_charge(amount, *, currency="EUR"):
    FAKED.append((amount, currency))
    return f"fake-{amount}"


@dualrun.side_effect(fake=_fake_charge)
def charge(amount, *, currency="EUR"):
    CHARGED.append((amount, currency))
    return f"charged-{amount}"


def plain_send(to):
    PLAIN.append(to)
    return "real"


class Mailer:
    @dualrun.side_effect
    def send(self, to):
        MAILED.append(to)
        return "mailed"


class Db:
    rows = []

    def save(self, row):
        Db.rows.append(row)
        return len(Db.rows)
"""

OLD = """
import HOST.mail as mail


def checkout(to):
    mail.send_email(to, subject="receipt")
    return "ok"


def welcome(to):
    mail.send_email(to, subject="hi")
    return "ok"


def same(to):
    mail.send_email(to, subject="same")
    return "ok"


def notify(number):
    return mail.send_sms(number)


def pay(amount):
    return mail.charge(amount, currency="EUR")


def plain(to):
    mail.plain_send(to)
    return "ok"


def save(row):
    mail.Db().save(row)
    return "saved"


def post(to):
    mail.Mailer().send(to)
    return "ok"
"""

NEW = """
import HOST.mail as mail


def checkout(to):
    mail.send_email(to, subject="receipt")
    mail.send_email("audit@example.com", subject="receipt")
    return "ok"


def welcome(to):
    mail.send_email(to.upper(), subject="hello")
    return "ok"


def same(to):
    mail.send_email(to, subject="same")
    return "ok"


def notify(number):
    return mail.send_sms(number)


def pay(amount):
    return mail.charge(amount, currency="EUR")


def plain(to):
    mail.plain_send(to)
    mail.plain_send(to)
    return "ok"


def save(row):
    mail.Db().save(row)
    mail.Db().save(row)
    return "saved"


def post(to):
    mail.Mailer().send(to + "!")
    return "ok"
"""


def setup(lab: Lab) -> tuple[dualrun.VersionPair, ModuleType, str]:
    """A host ``mail`` module and a version pair that calls it."""
    host = lab.host({"mail.py": MAIL})
    versions = lab.pair(OLD.replace("HOST", host), NEW.replace("HOST", host))
    mail = importlib.import_module(f"{host}.mail")
    return versions, mail, host


def only(divergences: list[Any]) -> tuple[str, str, str, str]:
    [d] = divergences
    example = d.examples[0]
    return d.path, d.kind, example["old"], example["new"]


def test_outside_a_shadowed_call_a_guarded_function_just_runs(lab: Lab) -> None:
    versions, mail, _host = setup(lab)
    assert mail.send_email("a@example.com", subject="x") == "sent-1"
    assert mail.send_sms("123") == "sms-real"
    assert mail.charge(3) == "charged-3"
    assert mail.Mailer().send("b") == "mailed"
    assert (mail.SENT, mail.SMS, mail.CHARGED, mail.MAILED) == (
        [("a@example.com", "x")],
        ["123"],
        [(3, "EUR")],
        ["b"],
    )
    assert mail.FAKED == []
    assert mail.send_email.__name__ == "send_email" and mail.send_email.__module__ == mail.__name__
    # Routed without shadow, or not sampled: the guarded call runs once, nothing is recorded.
    for shadow in (None, dualrun.Shadow(sample=0)):
        d = lab.dispatcher(versions, shadow=shadow)
        assert d.route(lab.target("checkout"))("c@example.com") == "ok"
    assert mail.SENT[1:] == [("c@example.com", "receipt")] * 2
    assert current_run.get() is None


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_the_shadow_records_and_does_not_execute_the_primary_executes_once(
    lab: Lab, mode: str
) -> None:
    versions, mail, _host = setup(lab)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    same = d.route(lab.target("same"))
    for i in range(5):
        assert same(f"u{i}@example.com") == "ok"
    assert d.flush(5)
    sent_by_the_primary = [(f"u{i}@example.com", "same") for i in range(5)]
    assert sent_by_the_primary == mail.SENT  # the shadow's emails were not sent
    report = route_report(d, lab.target("same"))
    assert (report.comparisons, report.matches, report.divergences) == (5, 5, [])


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_new_sending_two_emails_where_old_sent_one_is_a_divergence(lab: Lab, mode: str) -> None:
    versions, mail, host = setup(lab)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    assert d.route(lab.target("checkout"))("a@example.com") == "ok"
    assert d.flush(5)
    assert mail.SENT == [("a@example.com", "receipt")]  # old served; new's emails not sent
    report = d.report()
    route = report.route(lab.target("checkout"))
    assert route.comparisons == route.mismatches == 1
    path = f"$side_effects['{host}.mail:send_email']"
    assert only(route.divergences) == (path, "length", "1 call", "2 calls")
    assert path in report.to_text() and path in report.to_json()


def test_with_new_as_primary_new_executes_and_old_is_recorded(lab: Lab) -> None:
    versions, mail, host = setup(lab)
    d = lab.dispatcher(versions, policy=dualrun.Fixed("new"), shadow=dualrun.Shadow(primary="new"))
    assert d.route(lab.target("checkout"))("a@example.com") == "ok"
    assert mail.SENT == [("a@example.com", "receipt"), ("audit@example.com", "receipt")]
    route = route_report(d, lab.target("checkout"))
    path = f"$side_effects['{host}.mail:send_email']"
    assert only(route.divergences) == (path, "length", "1 call", "2 calls")  # old -> new


def test_different_arguments_to_a_side_effect_are_divergences_by_path(lab: Lab) -> None:
    versions, mail, host = setup(lab)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    d.route(lab.target("welcome"))("a@example.com")
    d.route(lab.target("post"))("b@example.com")
    assert mail.SENT == [("a@example.com", "hi")] and mail.MAILED == ["b@example.com"]
    name = f"$side_effects['{host}.mail:send_email']"
    found = {
        (x.path, x.kind, x.examples[0]["path"], x.examples[0]["old"], x.examples[0]["new"])
        for x in route_report(d, lab.target("welcome")).divergences
    }
    assert found == {
        (f"{name}[*].args[*]", "value", f"{name}[0].args[0]", "'a@example.com'", "'A@EXAMPLE.COM'"),
        (f"{name}[*].kwargs.subject", "value", f"{name}[0].kwargs.subject", "'hi'", "'hello'"),
    }
    # A guarded method records its arguments without the instance.
    method = f"$side_effects['{host}.mail:Mailer.send']"
    assert only(route_report(d, lab.target("post")).divergences) == (
        f"{method}[*].args[*]",
        "value",
        "'b@example.com'",
        "'b@example.com!'",
    )


def test_returns_and_fake_choose_what_the_shadow_run_gets(lab: Lab) -> None:
    versions, mail, _host = setup(lab)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    assert d.route(lab.target("notify"))("555") == "sms-real"
    assert mail.SMS == ["555"]
    # The shadow got the chosen value: its result differs, its side effect does not.
    assert only(route_report(d, lab.target("notify")).divergences) == (
        "$",
        "value",
        "'sms-real'",
        "'sms-fake'",
    )
    assert d.route(lab.target("pay"))(7) == "charged-7"
    assert mail.CHARGED == [(7, "EUR")] and mail.FAKED == [(7, "EUR")]
    assert only(route_report(d, lab.target("pay")).divergences) == (
        "$",
        "value",
        "'charged-7'",
        "'fake-7'",
    )


def test_calibration_runs_do_not_execute_side_effects(lab: Lab) -> None:
    versions, mail, _host = setup(lab)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(calibrate=True, calibrate_calls=5))
    for i in range(5):
        d.route(lab.target("same"))(f"u{i}")
    assert len(mail.SENT) == 5
    assert route_report(d, lab.target("same")).matches == 5


def test_patch_guards_a_host_function_in_place_and_undo_restores_it(lab: Lab) -> None:
    versions, mail, host = setup(lab)
    original = mail.plain_send
    handle = dualrun.side_effect.patch(f"{host}.mail:plain_send", returns="not sent")
    assert handle.applied and mail.plain_send is not original
    assert mail.plain_send("outside") == "real"  # outside a shadowed call it just runs
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    plain = d.route(lab.target("plain"))
    assert plain("a@example.com") == "ok"
    assert mail.PLAIN == ["outside", "a@example.com"]  # the primary's one call, not new's two
    path = f"$side_effects['{host}.mail:plain_send']"
    assert only(route_report(d, lab.target("plain")).divergences) == (
        path,
        "length",
        "1 call",
        "2 calls",
    )

    handle.undo()
    assert mail.plain_send is original and not handle.applied
    handle.undo()  # twice is harmless
    assert plain("b@example.com") == "ok"
    assert mail.PLAIN[2:] == ["b@example.com"] * 3  # unguarded: the shadow's calls ran too
    route = route_report(d, lab.target("plain"))
    assert (route.comparisons, route.matches, route.mismatches) == (2, 1, 1)


def test_patch_guards_a_host_method_with_a_fake(lab: Lab) -> None:
    versions, mail, host = setup(lab)
    original = mail.Db.__dict__["save"]
    fakes = []
    handle = dualrun.side_effect.patch(
        f"{host}.mail:Db.save", fake=lambda row: fakes.append(row) or -1
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    assert d.route(lab.target("save"))({"id": 1}) == "saved"
    assert mail.Db.rows == [{"id": 1}] and fakes == [{"id": 1}, {"id": 1}]
    path = f"$side_effects['{host}.mail:Db.save']"
    assert only(route_report(d, lab.target("save")).divergences)[:2] == (path, "length")
    handle.undo()
    assert mail.Db.__dict__["save"] is original


def test_patch_waits_for_a_host_module_not_imported_yet(lab: Lab) -> None:
    host = lab.host({"later.py": "CALLS = []\n\ndef ping(x):\n    CALLS.append(x)\n    return x\n"})
    name = f"{host}.later"
    assert name not in sys.modules
    handle = dualrun.side_effect.patch(f"{name}:ping", returns="shadow")
    assert not handle.applied
    later = importlib.import_module(name)
    assert handle.applied
    token = current_run.set(Run(shadow=True))
    try:
        assert later.ping(1) == "shadow" and later.CALLS == []
    finally:
        current_run.reset(token)
    handle.undo()
    assert later.ping(2) == 2 and later.CALLS == [2]


def test_the_guard_follows_the_run_it_is_in() -> None:
    calls: list[str] = []

    @dualrun.side_effect(name="write", returns="skipped")
    def write(text: str, *, mode: str = "a") -> str:
        calls.append(text)
        return "written"

    assert write("free") == "written"
    primary, shadow = Run(shadow=False), Run(shadow=True)
    for run, expected in ((primary, "written"), (shadow, "skipped")):
        token = current_run.set(run)
        try:
            assert write("x", mode="w") == expected
        finally:
            current_run.reset(token)
    assert calls == ["free", "x"]
    assert primary.calls == shadow.calls == [("write", ("x",), {"mode": "w"})]


def test_diff_side_effects_compares_calls_by_name_in_order() -> None:
    differ = Differ()
    old, new = Run(shadow=False), Run(shadow=True)
    old.calls += [("mail", ("a",), {}), ("db", (1,), {"table": "t"}), ("mail", ("b",), {})]
    new.calls += [("db", (1,), {"table": "u"}), ("mail", ("a",), {}), ("mail", ("c",), {})]
    new.calls += [("sms", ("1",), {})]
    found = [(d.path, d.kind, d.old, d.new) for d in diff_side_effects(differ, old, new)]
    assert found == [
        ("$side_effects.db[0].kwargs.table", "value", "'t'", "'u'"),
        ("$side_effects.mail[1].args[0]", "value", "'b'", "'c'"),
        ("$side_effects.sms", "length", "0 calls", "1 call"),
    ]
    assert diff_side_effects(differ, old, old) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dualrun.side_effect(returns=1, fake=print), "not both"),
        (lambda: dualrun.side_effect(fake=3), "fake is a callable"),
        (lambda: dualrun.side_effect(42), "guards a callable"),
        (lambda: dualrun.side_effect.patch("json:dumps", returns=1, fake=print), "not both"),
    ],
)
def test_bad_guards_are_refused(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_calibration_learns_noise_in_side_effect_arguments(lab: Lab) -> None:
    host = lab.host({"mail.py": MAIL})
    code = (
        f"import uuid\nfrom {host} import mail\n"
        "def notify(to):\n"
        "    mail.send_email(to, subject=f'order {uuid.uuid4()}')\n"
        "    return 'ok'\n"
    )
    versions = lab.pair(code, code)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(calibrate=True, calibrate_calls=3))
    notify = d.route(lab.target("notify"))
    for i in range(6):
        assert notify(f"u{i}@example.com") == "ok"
    report = route_report(d, lab.target("notify"))
    # The subject holds a fresh uuid on every run, even of one version: noise, not a mismatch.
    assert (report.mismatches, report.noise) == (0, 6)
    [noise] = report.noise_divergences
    assert noise.path.startswith("$side_effects[") and noise.path.endswith(".kwargs.subject")
