import threading

import pytest

from brain.modes import FLAGS, TRANSITIONS, Mode, ModeError, ModeManager


def test_boots_idle_without_motion():
    m = ModeManager()
    assert m.mode is Mode.IDLE
    assert not m.flags.motion and not m.flags.inference


@pytest.mark.parametrize("src", [m for m in Mode if m is not Mode.ESTOP])
def test_transition_table_is_enforced(src):
    for dst in Mode:
        m = ModeManager()
        if src is not Mode.IDLE:
            if src is Mode.TRAINING:
                m.set_mode(Mode.TRAINING)
            else:
                m.set_mode(src)
        allowed = dst in TRANSITIONS[src] or dst is src or dst is Mode.ESTOP
        if allowed:
            m.set_mode(dst)
            assert m.mode is dst
        else:
            with pytest.raises(ModeError, match="cannot go from"):
                m.set_mode(dst)
            assert m.mode is src


def test_training_cannot_jump_into_motion():
    m = ModeManager()
    m.set_mode("training")
    for target in ("manual", "autonomous"):
        with pytest.raises(ModeError):
            m.set_mode(target)
    assert not FLAGS[Mode.TRAINING].motion


def test_estop_latches_until_explicit_reset():
    m = ModeManager()
    m.set_mode("manual")
    m.estop("button")
    assert m.mode is Mode.ESTOP and m.estop_reason == "button"
    for target in ("idle", "manual", "autonomous", "training"):
        with pytest.raises(ModeError, match="latched"):
            m.set_mode(target)
    # a second e-stop keeps the first reason
    m.estop("again")
    assert m.estop_reason == "button"
    change = m.reset_estop()
    assert change.new is Mode.IDLE and m.mode is Mode.IDLE and m.estop_reason is None
    with pytest.raises(ModeError, match="not latched"):
        m.reset_estop()


def test_estop_flags_allow_nothing():
    f = FLAGS[Mode.ESTOP]
    assert not (f.motion or f.record or f.inference)


def test_unknown_mode_named_in_error():
    with pytest.raises(ModeError, match="unknown mode 'turbo'"):
        ModeManager().set_mode("turbo")


def test_listeners_and_generation():
    m = ModeManager()
    seen = []
    m.subscribe(lambda c: seen.append((c.old, c.new)))
    m.subscribe(lambda c: 1 / 0)  # a broken listener must not block changes
    g0 = m.generation
    m.set_mode("manual")
    m.estop("x")
    assert seen == [(Mode.IDLE, Mode.MANUAL), (Mode.MANUAL, Mode.ESTOP)]
    assert m.generation == g0 + 2


def test_concurrent_estop_wins():
    m = ModeManager()
    m.set_mode("manual")
    errors = []

    def flip():
        for _ in range(200):
            try:
                m.set_mode("autonomous")
                m.set_mode("manual")
            except ModeError:
                errors.append(1)

    t = threading.Thread(target=flip)
    t.start()
    m.estop("race")
    t.join()
    assert m.mode is Mode.ESTOP
