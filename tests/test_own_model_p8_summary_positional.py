"""`engine summary nets.py:Net` (a model where the checkpoint goes, --model forgotten) said 'no
checkpoint at nets.py:Net', and with --model-args '--model-args: a checkpoint knows its own model, image
shape and classes', neither saying what to type. It now says it is a model, and the --model to give."""

from engine.cli import main


def test_a_model_given_as_summarys_checkpoint_is_said_with_the_flag_to_use(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text("from torch import nn\n\n\ndef make(num_classes, width=4):\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    for argv, model in [(["summary", "nets.py:make", "--model-args", '{"width": 8}'], "nets.py:make"),
                        (["summary", "cifar_cnn"], "cifar_cnn")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"engine: error: {model} is a model, not a checkpoint: name it with --model (engine summary "
                       f"--model {model})\n")
    assert main(["summary", "missing.pt"]) == 1
    assert capsys.readouterr().err == "engine: error: no checkpoint at missing.pt\n"
