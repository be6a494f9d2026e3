"""engine.cpu: the name every measured decision is cached under tells CPUs apart."""

from engine import cpu

BLOCK = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma {extra}

"""


def cpuinfo(tmp_path, family, model, extra, name="cpuinfo"):
    path = tmp_path / name
    path.write_text("".join(BLOCK.format(n=n, family=family, model=model, extra=extra) for n in range(2)))
    return str(path)


def test_the_same_model_name_on_two_generations_gives_two_names(tmp_path):
    zen3 = cpu.description(cpuinfo(tmp_path, 25, 1, "", "zen3"))
    zen5 = cpu.description(cpuinfo(tmp_path, 26, 2, "avx512f avx512_bf16 avx512_vnni", "zen5"))
    assert zen3 == ("AMD EPYC (family 25, model 1)", ["avx2", "fma"])
    assert zen5 == ("AMD EPYC (family 26, model 2)", ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"])


def test_only_the_first_processor_is_read(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(open(cpuinfo(tmp_path, 26, 2, "avx512f")).read() + BLOCK.format(n=9, family=99, model=9, extra="amx_bf16"))
    assert cpu.description(str(path)) == ("AMD EPYC (family 26, model 2)", ["avx2", "fma", "avx512f"])


def test_without_cpuinfo_the_platform_names_the_machine(tmp_path):
    name, flags = cpu.description(str(tmp_path / "missing"))
    assert name and "family" not in name and flags == []


def test_this_machine_has_a_name():
    name, flags = cpu.description()
    assert cpu.name().startswith(name) and all(flag in cpu.name() for flag in flags)
