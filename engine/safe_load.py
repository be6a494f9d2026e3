"""Opening a file torch.save wrote without running anything in it: torch's weights-only reader, and
one line for each way a file is not a checkpoint (pickled code named, never run; text; a cut-short
zip; another program's zip). engine.checkpoint and --init-from's weights files read through it.
"""

import re
import warnings

import torch

from engine.errors import EngineError


def read_weights_only(path, what="engine checkpoint"):
    """What torch.load(weights_only=True) reads from the file at `path`, or one line saying why it
    cannot: pickled code is named and refused, never run. No fallback to an unsafe load."""
    try:
        with warnings.catch_warnings():  # torch's note on an old pickle protocol: this line says it all
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error).strip()
        refused = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text, re.I)
        named = (refused.group(1) or refused.group(2)) if refused else pickled_global(path)
        if named:
            raise EngineError(f"{path} holds pickled code ({named}), not only tensors "
                              "and plain values; refusing to load it (checkpoints are opened weights-only)") from None
        # torch's weights-only message opens with advice to load unsafely; the cause is further down
        lines = [line.strip() for line in text.splitlines() if line.strip()
                 and not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation"))]
        first = lines[0].split(". ")[0] if lines else type(error).__name__  # torch's first sentence
        if "Weights only load failed" in text:  # an unpickler error on bytes that are no checkpoint at all
            first = "not a PyTorch checkpoint, or one holding objects other than tensors and plain values"
        elif not is_zip(path):  # torch.save writes a zip; the unpickler's error on other bytes is noise
            first = "not a PyTorch checkpoint, which torch.save writes"  # (KeyError(105) for 'i', struct.error, ...)
        elif "enforce fail" in text:  # a zip archive of other files: torch's reader names its own source line
            first = "a zip archive, but not one torch.save wrote"
        elif isinstance(error, OSError) or "central directory" in text or "failed finding" in text:
            first = "its zip archive is cut short or damaged; a copy or download may be incomplete"  # torch's words: C++ names
        if is_onnx(path):
            first = "it is an ONNX model, which engine eval and predict take as a file named .onnx"
        raise EngineError(f"{path} is not a readable {what} ({first[:200]})") from None
    damaged = damaged_member(path)
    if damaged:
        raise EngineError(f"{path} is not a readable {what} (its {damaged} fails the CRC-32 check torch.save wrote "
                          "with it: the file changed after it was written; a copy, download or disk may have damaged it)")
    return loaded


def damaged_member(path):
    """The first member of torch.save's zip at `path` whose bytes no longer match the CRC-32 saved with
    them, or None. torch.load never checks them, so bytes changed inside a tensor (a bad disk or copy)
    loaded as other weights without a word. A CRC of 0 is torch's own when saved with
    set_crc32_options(False): not checked. Reading back a file just loaded costs about 25 ms per 48 MB."""
    import zipfile

    if not is_zip(path):  # a legacy (non-zip) torch.save file has no CRC to check
        return None
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):  # torch read it, Python's reader does not: nothing to check with
        return None
    with archive:
        for info in archive.infolist():
            try:
                if info.CRC:
                    with archive.open(info) as member:  # raises BadZipFile at its end on a CRC mismatch
                        while member.read(1 << 24):
                            pass
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as error:
                if "CRC" in str(error):
                    return info.filename
    return None


def is_zip(path):
    """Whether the file at `path` opens with a zip archive's signature, as torch.save's files do."""
    try:
        with open(path, "rb") as file:
            return file.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def is_onnx(path):
    """Whether the file at `path` parses as an ONNX model with a graph (protobuf only: nothing runs)."""
    try:
        import onnx

        return len(onnx.load_model(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # not protobuf, or onnx missing: not an ONNX model as far as this says
        return False


def pickled_global(path, limit=1 << 20):
    """The first function or class a plain pickle file names that torch's weights-only reader does
    not allow (e.g. 'posix.system'), read by disassembling its first `limit` bytes (pickletools runs
    nothing), or None: for a pickle that reader stops on before it reaches the name (protocol 4's
    framing)."""
    import io
    import pickletools

    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # torch's own list, where it has one
        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        allowed = set()
    try:
        with open(path, "rb") as file:
            data = file.read(limit)
        strings = []
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            named = (str(arg).replace(" ", ".") if opcode.name in ("GLOBAL", "INST") and _dotted(*str(arg).split(" "))
                     else f"{strings[-2]}.{strings[-1]}" if opcode.name == "STACK_GLOBAL" and len(strings) >= 2
                     and _dotted(strings[-2], strings[-1]) else None)
            if opcode.name in ("GLOBAL", "INST") and named is None:  # text ('import torch' reads as INST): no pickle
                return None
            if named and named not in allowed:
                return named
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a pickle, or cut short: the caller's own message stands
        return None
    return None


def _dotted(*parts):
    """Whether `parts` are a module and a name as a pickle names a global (two dotted identifiers), not
    the words of a text file the disassembler happened to read as one ("import torch" opens with 'i')."""
    return len(parts) == 2 and all(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", part) for part in parts)
