"""Command-line gin: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` overrides, as in T5X."""

from __future__ import annotations

import ast
import difflib
import logging
import math
import os
import re
import sys
import tokenize

import gin

import t5x_lite

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(t5x_lite.__file__)))
REPO_GIN_DIR = os.path.join(REPO_ROOT, 'gin')


class UsageError(ValueError):
  """Bad command-line input: reported as one line naming the cause and the fix."""


class MissingFileError(UsageError, FileNotFoundError):
  """A file the configuration names is not there: a UsageError that code catching
  FileNotFoundError also catches."""


def check_int(name: str, value, minimum: int | None = None, fix: str = '') -> int:
  """`value` as the integer gin meant, or a UsageError: gin passes `2.5`, `8.0` or `'abc'` through
  unchecked, and a float step count would train past TRAIN_STEPS without ever saving."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise UsageError(f'{name} must be an integer, got {value!r} ({type(value).__name__}); '
                     f'{fix or f"set --gin.{name}=N"}.')
  if minimum is not None and value < minimum:
    raise UsageError(f'{name} must be {"positive" if minimum == 1 else f">= {minimum}"}, got '
                     f'{value}; {fix or f"set --gin.{name}=N"}.')
  return value


def check_number(name: str, value, minimum: float | None = None) -> float:
  """A finite real number (ints allowed), or a UsageError naming the gin binding."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise UsageError(f'{name} must be a finite number, got {value!r}; set --gin.{name}=X.')
  if minimum is not None and value < minimum:
    raise UsageError(f'{name} must be >= {minimum}, got {value}; set --gin.{name}=X.')
  return value


def split_flags(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
  """(gin files, gin bindings, remaining args) from argv."""
  files, bindings, rest = [], [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith('--gin_file'):
      value = arg.split('=', 1)[1] if '=' in arg else next(it, None)
      if not value:
        raise UsageError('--gin_file needs a value, e.g. --gin_file=gin/runs/pretrain_tiny.gin')
      files.append(value)
    elif arg.startswith('--gin.'):
      if '=' not in arg:
        raise UsageError(f'{arg}: gin overrides take the form --gin.NAME=VALUE')
      name, value = arg[len('--gin.'):].split('=', 1)
      bindings.append(_binding(name, value))
    else:
      rest.append(arg)
  return files, bindings, rest


def _binding(name: str, value: str) -> str:
  """`NAME = VALUE`; a bare word that is not a gin literal (a path, say) is quoted for the user,
  but a value that starts a dict, list, tuple or string and does not parse is an error (quoting
  it would hand the trainer a string where it expects a dict)."""
  try:
    gin.config_parser.ConfigParser(f'{name} = {value}', gin.config.ParserDelegate(skip_unknown=True)
                                   ).parse_statement()
    return f'{name} = {value}'
  except (SyntaxError, ValueError, tokenize.TokenError) as e:
    if value.strip()[:1] in ('{', '[', '(', '"', "'"):
      reason = e.args[0] if e.args and isinstance(e.args[0], str) else type(e).__name__
      raise UsageError(f'--gin.{name}={value}: not a gin value ({reason}); close every bracket '
                       'and quote, e.g. "--gin.MESH_SHAPE={\'data\': -1}".') from e
    return f'{name} = {value!r}'


def resolve_gin_file(path: str) -> str:
  """A gin file as given, or relative to the repo's gin/ directory."""
  for candidate in (path, os.path.join(REPO_GIN_DIR, path),
                    os.path.join(REPO_GIN_DIR, path.removeprefix('gin/'))):
    if os.path.isfile(candidate):
      return candidate
  raise UsageError(f'gin file not found: {path} (looked in the current directory and in '
                   f'{REPO_GIN_DIR}); check the --gin_file path.')


def _not_gin_path_probe(record: logging.LogRecord) -> bool:
  return not (record.name == 'root' and record.getMessage().startswith('Path not found: '))


def parse(files: list[str], bindings: list[str]) -> None:
  """Parses files then overrides; unknown names and syntax errors become UsageErrors."""
  if not files:
    raise UsageError('no --gin_file given; e.g. --gin_file=gin/runs/pretrain_tiny.gin')
  gin.add_config_file_search_path(REPO_ROOT)  # so `include 'gin/...'` works from any directory
  # On the way to the search path gin tries each include as a Python package resource and logs
  # `ERROR:root:Path not found` when it is not one; a file found nowhere is our own error line.
  logging.getLogger().addFilter(_not_gin_path_probe)
  resolved = [resolve_gin_file(f) for f in files]
  try:
    gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
  except (ValueError, SyntaxError, KeyError, ImportError, OSError) as e:
    raise UsageError(f'gin: {str(e).splitlines()[0]} — check the gin files, their includes and '
                     'the --gin.* overrides (names are configurable.parameter or MACRO).') from e
  _check_flag_macros(bindings, used=_check_references())


def _check_references() -> set[str]:
  """Every macro used is set, or a UsageError says which; a macro left `%gin.REQUIRED` fails the
  same way, but only when something uses it (`python -m t5x_lite.plan` reads a run gin file
  without MODEL_DIR). Unchecked, the first would fail when its configurable is called, as gin's
  TypeError deep in a traceback, and the second would hand gin's placeholder object on as a value.
  Returns the names of the macros that bindings use."""
  config = gin.config._CONFIG  # pylint: disable=protected-access  (gin has no public view of it)
  unset, used = [], set()
  for (scope, selector), params in list(config.items()):
    for parameter, value in params.items():
      if selector == 'gin.macro':
        user = scope
      else:
        user = f'{scope}/{selector}.{parameter}' if scope else f'{selector}.{parameter}'
      for ref in gin.config.iterate_references(value):
        if (ref.configurable.module, ref.configurable.name) != ('gin', 'macro'):
          continue
        name = ref.scoped_selector.rsplit('/', 1)[0]
        if ref.config_key not in config:
          raise UsageError(f'gin macro {name} (used by {user}) is never set; set it in a gin file '
                           f'or with --gin.{name}=VALUE, or fix the name.')
        used.add(name)
      if (selector == 'gin.macro' and isinstance(value, gin.config.ConfigurableReference)
          and value.scoped_selector == 'gin.REQUIRED/gin.constant'):
        unset.append(scope)
  for name in unset:
    gin.parse_config(f'{name} = @{name}/t5x_lite.required_macro_not_set()')
  return used


def _check_flag_macros(bindings: list[str], used: set[str]) -> None:
  """A macro set by a --gin.NAME=VALUE flag that no binding `used` (nor an entry point) is a typo
  (gin would take it as a new macro and run with the real one's value, `--gin.TRAIN_STEP=5` for
  TRAIN_STEPS); said with the nearest macro that is used."""
  used = used | set(CODE_MACROS)
  for binding in bindings:
    name = binding.split('=', 1)[0].strip()
    if name.isidentifier() and name.upper() == name and name not in used:
      near = difflib.get_close_matches(name, sorted(used), n=1)
      hint = f'did you mean {near[0]}? ' if near else ''
      raise UsageError(f'--gin.{name}: no gin binding uses the macro {name}, so it would change '
                       f'nothing; {hint}Macros used here: {", ".join(sorted(used))}.')


@gin.register(module='t5x_lite')
def required_macro_not_set():
  """The value of a macro left `%gin.REQUIRED` (its name is the gin scope): using it is an error."""
  name = gin.current_scope_str()
  raise UsageError(f'{name} is gin.REQUIRED and no gin file or flag sets it; set it with '
                   f'--gin.{name}=VALUE.')


# Macros the entry points read themselves (query_macro), whether or not a binding uses them.
CODE_MACROS = ('MODEL_CONFIG', 'BATCH_SIZE', 'MIXTURE_OR_TASK_NAME', 'TASK_FEATURE_LENGTHS')


def query_macro(name: str):
  """The evaluated value of gin macro `name` (configurable references are called)."""
  try:
    value = gin.query_parameter(f'{name}/macro.value')
  except ValueError as e:
    raise UsageError(f'gin macro {name} is not set; bind it in a gin file or with --gin.{name}=...') from e
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn()  # `@X()` builds X; `@X` would be the callable itself
  return value


def run_cli(fn, argv: list[str] | None = None) -> int:
  """Runs `fn(argv)`; a UsageError prints `error: ...` on one line and exits 2 (`--verbose`
  re-raises it with its traceback). Every entry point goes through here."""
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = '--verbose' in argv
  argv = [a for a in argv if a != '--verbose']
  try:
    return fn(argv) or 0
  except UsageError as e:
    if verbose:
      raise
    print(f'error: {one_line(e)}', file=sys.stderr)
    return 2


def one_line(error: BaseException) -> str:
  """The error's message on one line, without the call sites gin appends to errors raised inside
  configurables ("In call to configurable 'train'"): they belong in the --verbose traceback."""
  message = re.split(r'\n\s*In (?:call to configurable|file|bindings string)\b', str(error))[0]
  return ' '.join(message.split())


def run_main(fn, argv: list[str] | None = None) -> int:
  """Runs `fn(rest_args)` after gin parsing, under `run_cli`."""

  def parse_then_run(args):
    files, bindings, rest = split_flags(args)
    parse(files, bindings)
    try:
      return fn(rest)
    except RuntimeError as e:
      missing = re.match(r'Required bindings for `(.+?)` not provided in config: (\[.*?\])', str(e))
      if not missing:
        raise
      raise _required_error(missing.group(1), ast.literal_eval(missing.group(2))) from e

  return run_cli(parse_then_run, argv)


def _required_error(configurable: str, parameters: list[str]) -> UsageError:
  """gin's "Required bindings ... not provided" (a parameter whose default is gin.REQUIRED)."""
  names = ', '.join(f'{configurable}.{p}' for p in parameters)
  flags = ' '.join(f'--gin.{configurable}.{p}=VALUE' for p in parameters)
  return UsageError(f'{names}: required (gin.REQUIRED) but bound by no gin file; set in a gin file '
                    f'or with {flags}.')
