"""Every refusal the package raises is a DPRoPEError, and the command line turns each into one line, exit 2,
in one place."""

import ast
import builtins
from pathlib import Path

import pytest

from dprope_kernels import commands, errors

PACKAGE = Path(__file__).resolve().parents[1] / "dprope_kernels"
BUILTIN = {name for name, value in vars(builtins).items()
           if isinstance(value, type) and issubclass(value, BaseException)}
# raises that are not refusals of an input: the module __getattr__ protocol, and a lookup of a name the
# module itself chose (a bug if it ever fails)
NOT_REFUSALS = {("__init__.py", "AttributeError"), ("commands/compare/tables.py", "KeyError")}


def raised_builtins() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                    and isinstance(node.exc.func, ast.Name) and node.exc.func.id in BUILTIN \
                    and (name, node.exc.func.id) not in NOT_REFUSALS:
                found.append(f"{name}:{node.lineno} raises {node.exc.func.id}")
    return found


def test_the_package_raises_its_own_errors_not_builtin_ones():
    assert raised_builtins() == []


def test_each_error_class_of_the_package_is_a_dprope_error_and_keeps_its_builtin_kind():
    from dprope_kernels.commands.compare import CompareError
    from dprope_kernels.export import ExportError
    from dprope_kernels.files import DirectoryInUse
    from dprope_kernels.hf_config import ConfigError

    for cls, kind in ((ConfigError, ValueError), (ExportError, ValueError), (CompareError, ValueError),
                      (DirectoryInUse, RuntimeError), (errors.InvalidType, TypeError),
                      (errors.InvalidKey, KeyError), (errors.Unsupported, RuntimeError),
                      (errors.MissingDependency, ImportError), (errors.FileProblem, OSError),
                      (errors.OutputExists, FileExistsError)):
        assert issubclass(cls, errors.DPRoPEError) and issubclass(cls, kind), cls


@pytest.mark.parametrize("error", [errors.InvalidValue("a\nb"), errors.FileProblem("cannot write x: full"),
                                   errors.Unsupported("no"), errors.MissingDependency("needs y")])
def test_the_command_line_turns_any_package_error_into_one_line_and_exit_2(monkeypatch, capsys, error):
    from dprope_kernels.commands import info

    def refuse(args):
        raise error

    monkeypatch.setattr(info, "run", refuse)
    assert commands.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dprope info: error: ") and len(err.strip().splitlines()) == 1


def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch):
    from dprope_kernels.commands import info

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(ZeroDivisionError):
        commands.main(["info"])


def test_a_file_the_system_cannot_write_is_one_line_naming_it(tmp_path):
    from dprope_kernels import files

    target = tmp_path / "not-a-folder"
    target.write_text("a file")
    with pytest.raises(errors.FileProblem, match=f"cannot write {target / 'x.json'}: Not a directory"):
        files.write_json(target / "x.json", {})


def test_a_write_into_a_read_only_directory_says_why_not_a_second_failure(unwritable):
    """Finding 15: files._remove, cleaning up after the failed write, could fail too and hide the real
    error behind its own."""
    from dprope_kernels import files

    target = unwritable / "dprope-result.json"
    with pytest.raises(errors.FileProblem, match=f"cannot write {target}: (Permission denied|Operation not "
                                                 "permitted|Read-only file system)"):
        files.write_json(target, {"a": 1})
    with pytest.raises(errors.FileProblem, match=f"cannot write {unwritable / 'out'}"):
        with files.writing(unwritable / "out", directory=True):
            pass
    run = unwritable / "run"
    with pytest.raises(errors.FileProblem, match=f"--output {run}: cannot write in {unwritable}"):
        files.check_writable(run)
    assert not list(unwritable.glob(".*partial*")) and not list(unwritable.glob(".dprope-probe-*"))
