"""The watch of unanswered digest challenges (``routing.challenge_watch``) on a fake clock (the registrar's
log line for a phone that gave up: test_registrar_service)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from durchwahl.routing.challenge_watch import ChallengeWatch, Unanswered

T0 = 1_700_000_000.0

ALGORITHMS = ("SHA-256", "MD5")


def challenge(source: str, user: str, at: float, agent: str | None = "baresip v1.0.0") -> Unanswered:
    return Unanswered(source, user, f"UDP {source}:5062", agent, ALGORITHMS, at)


def test_a_challenge_nobody_answers_is_due_after_the_wait_and_reported_once() -> None:
    watch = ChallengeWatch(answer_within=10.0, quiet_for=3600.0)
    watch.challenged(challenge("192.0.2.7", "101", T0))
    watch.challenged(challenge("192.0.2.7", "101", T0 + 5))  # the phone retried without credentials
    assert watch.next_due() == T0 + 10
    assert watch.due(T0 + 9.9) == []
    (gave_up,) = watch.due(T0 + 10)
    assert (gave_up.source, gave_up.user, gave_up.challenged_at) == ("192.0.2.7", "101", T0)
    assert watch.next_due() is None and watch.waiting == 0
    # The phone tries again a minute later and gives up again: not reported again within the hour.
    watch.challenged(challenge("192.0.2.7", "101", T0 + 60))
    assert watch.due(T0 + 80) == []
    watch.challenged(challenge("192.0.2.7", "101", T0 + 3700))
    assert [c.user for c in watch.due(T0 + 3710)] == ["101"]


def test_credentials_from_the_source_for_the_user_end_the_wait() -> None:
    watch = ChallengeWatch(answer_within=10.0)
    watch.challenged(challenge("192.0.2.7", "101", T0))
    watch.challenged(challenge("192.0.2.8", "101", T0))
    watch.answered("192.0.2.7", "101")
    watch.answered("192.0.2.8", "102")  # another user from that source: not an answer for 101
    assert [(c.source, c.user) for c in watch.due(T0 + 10)] == [("192.0.2.8", "101")]


def test_the_watch_is_bounded() -> None:
    watch = ChallengeWatch(answer_within=10.0, max_tracked=100)
    for n in range(1000):  # a scanner trying every extension
        watch.challenged(challenge("198.51.100.9", str(n), T0 + n / 1000))
    assert watch.waiting == 100
    due = watch.due(T0 + 20)
    assert [c.user for c in due] == [str(n) for n in range(900, 1000)]  # the newest were kept


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["challenge", "answer"]),
            st.sampled_from(["192.0.2.1", "192.0.2.2"]),
            st.sampled_from(["101", "102"]),
            st.floats(0, 30),
        ),
        max_size=40,
    )
)
def test_a_challenge_is_reported_only_when_no_answer_followed_it_in_time(
    steps: list[tuple[str, str, str, float]],
) -> None:
    """Against a simple model: each reported (source, user) was challenged at least ``answer_within``
    before the sweep and had no answer since its first challenge still waiting."""
    watch = ChallengeWatch(answer_within=10.0, quiet_for=0.0)
    now = T0
    waiting: dict[tuple[str, str], float] = {}
    for action, source, user, step in steps:
        now += step
        expected = {key for key, at in waiting.items() if at + 10.0 <= now}
        found = watch.due(now)
        assert {(c.source, c.user) for c in found} == expected
        for key in expected:
            del waiting[key]
        if action == "challenge":
            watch.challenged(challenge(source, user, now))
            waiting.setdefault((source, user), now)
        else:
            watch.answered(source, user)
            waiting.pop((source, user), None)
