"""--eval-every 0.5 on a run whose epoch is one step said '(1 evaluations an epoch)'."""

from engine.target import Watch


def test_one_step_epochs_say_one_evaluation():
    line = Watch(None, 0.5, 1, 2, 0.0).note(0.5, 1)
    assert "(1 evaluation an epoch)" in line, line
    assert "(3 evaluations an epoch)" in Watch(None, 0.1, 3, 2, 0.0).note(0.1, 3)
