"""A Ctrl-C in the second or so Python takes to exit after an `engine` command finished (torch's
teardown) printed "Exception ignored in: ... KeyboardInterrupt" with a traceback, and the command's
exit code stood: the command now ignores SIGINT once it is done, while the interpreter exits."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import atexit, signal, sys
    # registered before the command's own exit handler, so it runs after it (atexit is last in, first out)
    atexit.register(lambda: print("SIGINT ignored at exit:", signal.getsignal(signal.SIGINT) is signal.SIG_IGN))
    from engine.cli import main
    sys.argv = ["engine", "--version"]
    sys.exit(main())
""")


def test_the_command_ignores_ctrl_c_while_python_exits_after_it():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "SIGINT ignored at exit: True"


def test_main_called_with_arguments_leaves_the_callers_sigint_alone(capsys):
    import signal

    from engine.cli import main

    before = signal.getsignal(signal.SIGINT)
    assert main(["--version"]) == 0
    assert signal.getsignal(signal.SIGINT) is before
