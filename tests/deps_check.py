#!/usr/bin/python3
"""deps_check.py: every Python module and every external program that the tests, tools,
benchmarks and build recipes use must come from a Debian package that tools/install-deps
installs, or from Debian's base system (project issue 15: `make check` failed on a fresh
Debian 12 machine because nothing installed scipy). Run by tests/test_deps.sh.

  deps_check.py [--srcdir DIR] [--list] [FILE...]

Reads the `packages="..."` list of DIR/tools/install-deps and scans DIR/tests, DIR/tools,
DIR/benchmarks, DIR/mk, DIR/Makefile.am, DIR/.ci/run and DIR/build-aux/embed-cl.sh, plus any
FILE given (to try the check out on a new file):
  * Python: *.py files and files with a python shebang, and Python embedded in shell scripts
    (`"$py" -c '...'`, `"$PY" - <<'EOF'` heredocs) and in C tests' command strings; their
    imports, less the standard library (sys.stdlib_module_names of this interpreter) and the
    project's own modules (a NAME.py in tests/, tools/ or benchmarks/), must be in MODULES;
  * programs: the command words of shell scripts, make recipes, AM_TESTS_ENVIRONMENT, C tests'
    command strings (snprintf/fmt(cmd, ...), system("...")) and literal subprocess calls must
    be shell built-ins, functions the scripts define, the project's own programs, or in
    PROGRAMS; a program of a package outside the base system needs its package in
    install-deps.
Each third-party module found must also import with this interpreter ($PYTHON3): else
tools/install-deps has not been run since its list grew. --list prints every module and
program found, with where it is used.
Exits 0 when everything is covered, 1 with one message per problem otherwise. Standard library
only: it runs before anything it checks is known to be installed.
"""
import ast
import importlib
import os
import re
import sys

# Third-party Python modules -> the Debian 12 package that provides them.
MODULES = {
    'numpy': 'python3-numpy',
    'scipy': 'python3-scipy',
    'astropy': 'python3-astropy',
    'h5py': 'python3-h5py',
    'yaml': 'python3-yaml',
    'matplotlib': 'python3-matplotlib',
    'fitsio': 'python3-fitsio',
}

# Debian's base system: packages that are Essential (dpkg-query -W -f='${Essential}') or of
# Priority required on Debian 12, present on every installation (debootstrap's minbase,
# the debian:12 image), so install-deps need not name them.
BASE = {
    'coreutils': '[ basename cat chgrp chmod chown cksum comm cp csplit cut date dd df dirname du '
                 'echo env expr factor false fmt fold head id install join link ln logname ls '
                 'md5sum mkdir mkfifo mknod mktemp mv nice nl nohup nproc numfmt od paste pr '
                 'printenv printf pwd readlink realpath rm rmdir seq sha1sum sha256sum sha512sum '
                 'shred shuf sleep sort split stat stdbuf stty sum sync tac tail tee test timeout '
                 'touch tr true truncate tsort tty uname unexpand uniq unlink wc whoami yes',
    'bash': 'bash', 'dash': 'sh dash', 'sed': 'sed', 'grep': 'grep egrep fgrep',
    'findutils': 'find xargs', 'diffutils': 'cmp diff diff3 sdiff',
    'gzip': 'gzip gunzip zcat', 'tar': 'tar', 'mawk': 'awk mawk', 'debianutils': 'which',
    'libc-bin': 'getconf ldd locale', 'dpkg': 'dpkg dpkg-query', 'apt': 'apt-get apt-cache',
    'perl-base': 'perl', 'hostname': 'hostname', 'util-linux': 'getopt flock kill',
}

# Programs outside the base system -> their Debian 12 package.
PROGRAMS = {
    'python3': 'python3', 'make': 'make', 'gcc': 'gcc', 'cc': 'gcc',
    'autoreconf': 'autoconf', 'autoconf': 'autoconf', 'autoheader': 'autoconf',
    'automake': 'automake', 'aclocal': 'automake', 'libtoolize': 'libtool',
    'pkg-config': 'pkg-config', 'bc': 'bc', 'dc': 'dc', 'xxd': 'xxd', 'xz': 'xz-utils',
    'unxz': 'xz-utils', 'xzcat': 'xz-utils', 'bzip2': 'bzip2', 'zstd': 'zstd', 'zip': 'zip',
    'unzip': 'unzip', 'file': 'file', 'hexdump': 'bsdextrautils', 'jq': 'jq', 'curl': 'curl',
    'wget': 'wget', 'git': 'git', 'gdb': 'gdb', 'valgrind': 'valgrind', 'strace': 'strace',
    'mpirun': 'openmpi-bin', 'mpiexec': 'openmpi-bin', 'clinfo': 'clinfo', 'sudo': 'sudo',
    'ps': 'procps', 'pkill': 'procps', 'pgrep': 'procps', 'free': 'procps',
    'fitsverify': 'fitsverify', 'fpack': 'libcfitsio-bin', 'funpack': 'libcfitsio-bin',
    'h5dump': 'hdf5-tools', 'h5ls': 'hdf5-tools', 'shellcheck': 'shellcheck',
    'ar': 'binutils', 'nm': 'binutils', 'clang': 'clang', 'clang-14': 'clang-14',
}
for _pkg, _progs in BASE.items():
    for _p in _progs.split():
        PROGRAMS[_p] = None

SHELL_BUILTINS = set('''. : [[ ]] alias bg break cd command continue declare echo eval exec exit
export false fg getopts hash jobs kill let local printf pwd read readonly return set shift source
test times trap true type typeset ulimit umask unalias unset wait'''.split())
PREFIX_WORDS = set('if then else elif do while until ! { time'.split())
END_WORDS = set('fi done } esac'.split())
WRAPPERS = set('exec nohup nice env timeout xargs sudo command stdbuf'.split())

SCAN_DIRS = ('tests', 'tools', 'benchmarks', 'mk')
SCAN_FILES = ('Makefile.am', '.ci/run', 'build-aux/embed-cl.sh')
SKIP_DIRS = ('cache', 'pocl-cache', '.deps', '.libs', '__pycache__')


# ------------------------------------------------------------------ shell lexer
class Word:
    """A shell word after quote removal; dynamic when it holds an expansion."""

    def __init__(self, line):
        self.text = ''
        self.dynamic = False
        self.quoted = False
        self.line = line
        self.subs = []  # command substitutions: token lists

    def __repr__(self):
        return 'Word(%r)' % self.text


class Heredoc:
    """A here-document; its body is read at the end of the line that opens it."""

    def __init__(self, delim, strip, line):
        self.delim, self.strip, self.line, self.body = delim, strip, line, ''


OPERATORS = ('&&', '||', ';;', ';&', '<<<', '<<-', '<<', '>>', '>&', '<&', '>|', '<>',
             ';', '&', '|', '(', ')', '<', '>')
REDIRECTS = ('<<<', '>>', '>&', '<&', '>|', '<>', '<', '>')


class Lexer:
    """Splits shell source into words, operators, newlines and heredocs (bodies filled in)."""

    def __init__(self, src, line=1):
        self.s, self.i, self.line = src, 0, line
        self.pending = []

    def error(self, msg):
        raise ValueError('line %d: %s' % (self.line, msg))

    def lex(self, stop_paren=False):
        s, toks, depth, cases = self.s, [], 0, 0
        while self.i < len(s):
            c = s[self.i]
            if c in ' \t':
                self.i += 1
            elif s.startswith('\\\n', self.i):
                self.i += 2
                self.line += 1
            elif c == '#':
                while self.i < len(s) and s[self.i] != '\n':
                    self.i += 1
            elif c == '\n':
                self.i += 1
                self.line += 1
                toks.append(('nl', '\n', self.line - 1))
                self.read_heredocs()
            else:
                m = re.match(r'\d*(?=[<>])', s[self.i:])
                op = None
                if m:
                    rest = s[self.i + m.end():]
                    op = next((o for o in OPERATORS if rest.startswith(o)), None)
                    if op:
                        self.i += m.end()
                if op is None:
                    op = next((o for o in OPERATORS if s.startswith(o, self.i)), None)
                if op is not None:
                    if op == ')' and depth == 0 and cases > 0:
                        pass    # a case pattern's ')'
                    elif op == ')' and stop_paren and depth == 0:
                        self.i += 1
                        return toks
                    else:
                        depth += {'(': 1, ')': -1}.get(op, 0)
                    self.i += len(op)
                    if op in ('<<', '<<-'):
                        w = self.word()
                        h = Heredoc(w.text, op == '<<-', self.line)
                        self.pending.append(h)
                        toks.append(('heredoc', h, self.line))
                    else:
                        toks.append(('op', op, self.line))
                else:
                    w = self.word()
                    if not w.quoted and not w.dynamic:
                        cases += {'case': 1, 'esac': -1}.get(w.text, 0)
                    toks.append(('word', w, self.line))
        if stop_paren:
            self.error('unterminated $(')
        return toks

    def read_heredocs(self):
        for h in self.pending:
            body = []
            while self.i < len(self.s):
                end = self.s.find('\n', self.i)
                end = len(self.s) if end < 0 else end
                ln = self.s[self.i:end]
                self.i = end + 1
                self.line += 1
                if (ln.lstrip('\t') if h.strip else ln) == h.delim:
                    break
                body.append(ln)
            h.body = '\n'.join(body) + '\n'
        self.pending = []

    def word(self):
        s, w = self.s, Word(self.line)
        while self.i < len(s) and s[self.i] in ' \t':
            self.i += 1
        while self.i < len(s):
            c = s[self.i]
            if c in ' \t\n;&|()<>':
                break
            if c == '\\':
                if s.startswith('\\\n', self.i):
                    self.line += 1
                else:
                    w.text += s[self.i + 1:self.i + 2]
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    self.error('unterminated quote')
                w.text += s[self.i + 1:end]
                self.line += s.count('\n', self.i, end)
                self.i = end + 1
                w.quoted = True
            elif c == '"':
                self.i += 1
                w.quoted = True
                while True:
                    if self.i >= len(s):
                        self.error('unterminated double quote')
                    c = s[self.i]
                    if c == '"':
                        self.i += 1
                        break
                    if c == '\\' and s[self.i + 1:self.i + 2] in ('$', '`', '"', '\\', '\n'):
                        if s[self.i + 1] != '\n':
                            w.text += s[self.i + 1]
                        else:
                            self.line += 1
                        self.i += 2
                    elif c in '$`':
                        self.expansion(w)
                    else:
                        if c == '\n':
                            self.line += 1
                        w.text += c
                        self.i += 1
            elif c in '$`':
                self.expansion(w)
            else:
                w.text += c
                self.i += 1
        return w

    def expansion(self, w):
        """$name, ${...}, $(...), $((...)) or `...` at self.i: appended to w as text."""
        s, start = self.s, self.i
        if s[self.i] == '`':
            end = self.i + 1
            while end < len(s) and s[end] != '`':
                end += 2 if s[end] == '\\' else 1
            w.subs.append(Lexer(s[self.i + 1:end].replace('\\`', '`'), self.line).lex())
            self.i = end + 1
        elif s.startswith('$((', self.i):
            depth, j = 0, self.i + 1
            while j < len(s):
                depth += {'(': 1, ')': -1}.get(s[j], 0)
                j += 1
                if depth == 0:
                    break
            self.inner_subs(w, s[self.i + 3:j - 2])
            self.i = j
        elif s.startswith('$(', self.i):
            sub = Lexer(s, self.line)
            sub.i = self.i + 2
            w.subs.append(sub.lex(stop_paren=True))
            self.line, self.i = sub.line, sub.i
        elif s.startswith('${', self.i):
            depth, j = 0, self.i + 1
            while j < len(s):
                if s[j] == '\\':
                    j += 2
                    continue
                depth += {'{': 1, '}': -1}.get(s[j], 0)
                j += 1
                if depth == 0:
                    break
            self.inner_subs(w, s[self.i + 2:j - 1])
            self.i = j
        else:
            m = re.match(r'\$([A-Za-z_]\w*|[0-9@*#?$!-])?', s[self.i:])
            self.i += max(m.end(), 1)
        w.text += s[start:self.i]
        w.dynamic = w.dynamic or s[start:self.i] != '$'
        self.line += s.count('\n', start, self.i)

    def inner_subs(self, w, text):
        """Command substitutions inside ${...} or $((...)), e.g. ${X:-$(cd .. && pwd)}."""
        for m in re.finditer(r'\$\((?!\()', text):
            sub = Lexer(text, self.line)
            sub.i = m.end()
            try:
                w.subs.append(sub.lex(stop_paren=True))
            except ValueError:
                pass


# ------------------------------------------------------------------ shell commands
class Command:
    def __init__(self, word):
        self.words, self.heredocs = [word], []


def commands(toks, functions, assignments):
    """The simple commands of a token list (command substitutions included), in order."""
    out, cur, expect, skip_next = [], None, True, False
    mode, case_depth = 'normal', 0
    n = len(toks)
    for k, (kind, val, line) in enumerate(toks):
        if kind == 'word':
            for sub in val.subs:
                out += commands(sub, functions, assignments)
        if kind == 'heredoc':
            if cur is not None:
                cur.heredocs.append(val)
            continue
        if kind in ('nl', 'op') and not (kind == 'op' and val in REDIRECTS):
            if mode == 'for' and (kind == 'nl' or val == ';'):
                mode = 'normal'
            if val in (';;', ';&') and case_depth:
                mode = 'pattern'
            elif val == ')' and mode == 'pattern':
                mode = 'normal'
            expect, cur = True, None
            continue
        if kind == 'op':
            skip_next = True
            continue
        if skip_next:
            skip_next = False
            continue
        t = val.text
        if mode == 'for':
            continue
        if mode == 'case':
            if t == 'in' and not val.quoted:
                mode = 'pattern'
            continue
        if mode == 'pattern':
            if t == 'esac' and not val.quoted:
                mode, case_depth = 'normal', case_depth - 1
            continue
        if not expect:
            cur.words.append(val)
            continue
        if not val.quoted and not val.dynamic:
            if t in PREFIX_WORDS or t in END_WORDS:
                if t == 'esac':
                    case_depth -= 1
                continue
            if t == 'case':
                mode, case_depth = 'case', case_depth + 1
                continue
            if t == 'for':
                mode = 'for'
                continue
        m = re.match(r'([A-Za-z_]\w*)=', t)
        if m:
            assignments.setdefault(m.group(1), []).append(t[m.end():])
            continue
        if (k + 2 < n and toks[k + 1][:2] == ('op', '(') and toks[k + 2][:2] == ('op', ')')):
            functions.add(t)
            continue
        cur = Command(val)
        out.append(cur)
        expect = False
    return out


def lex_shell(src, line=1):
    return Lexer(src, line).lex()


# ------------------------------------------------------------------ the scan
class Scan:
    def __init__(self, srcdir):
        self.srcdir = srcdir
        self.modules = {}    # module -> [where]
        self.programs = {}   # program -> [where]
        self.notes = []
        self.errors = []
        self.python_sources = 0
        self.shell_sources = 0
        self.functions = set()
        self.own = set()
        for d in ('tests', 'tools', 'benchmarks'):
            p = os.path.join(srcdir, d)
            if os.path.isdir(p):
                self.own |= {f[:-3] for f in os.listdir(p) if f.endswith('.py')}
                self.own |= set(os.listdir(p))

    def rel(self, path):
        r = os.path.relpath(path, self.srcdir)
        return path if r.startswith('..') else r

    # --- Python
    def python(self, code, where, embedded=False):
        """Python source; where: a file, or for embedded code 'file:line (how)'."""
        self.python_sources += 1
        at = (lambda n: where) if embedded else (lambda n: '%s:%d' % (where, n))
        try:
            tree = ast.parse(code)
        except SyntaxError:
            # not plain Python (e.g. a heredoc with shell expansions): the import lines only
            for k, ln in enumerate(code.splitlines(), 1):
                m = re.match(r'\s*(?:import\s+([\w.]+(?:\s*,\s*[\w.]+)*)'
                             r'|from\s+([\w.]+)\s+import\s)', ln)
                if m:
                    for name in (m.group(1) or m.group(2)).split(','):
                        self.module(name.strip(), at(k))
            return
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.module(a.name, at(node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    self.module(node.module, at(node.lineno))
            elif isinstance(node, ast.Call):
                self.python_call(node, at(node.lineno))

    def python_call(self, node, where):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
        base = getattr(f.value, 'id', '') if isinstance(f, ast.Attribute) else ''
        arg = node.args[0] if node.args else None
        lit = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        here = where
        if name in ('__import__', 'import_module'):
            if lit is not None:
                self.module(lit, here)
            elif not where.startswith('tests/deps_check.py:'):  # its own check of the modules
                self.notes.append('%s: %s() of a computed name is not checked' % (here, name))
        elif base == 'subprocess' or (base, name) == ('os', 'system') or name == 'which':
            if isinstance(arg, (ast.List, ast.Tuple)) and arg.elts:
                first = arg.elts[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    self.program_word(first.value, here)
            elif lit is not None and name == 'which':
                self.program_word(lit, here)
            elif lit is not None:
                self.shell(lit, here)

    def module(self, name, where):
        top = name.split('.')[0]
        if top and top not in sys.stdlib_module_names and top not in self.own:
            self.modules.setdefault(top, []).append(where)

    # --- programs
    def program_word(self, name, where):
        if '/' in name:
            if not name.startswith('/'):
                return          # a project path: tools/install-deps, ./configure
            name = os.path.basename(name)
        if (name in SHELL_BUILTINS or name in self.functions or name in self.own
                or name.startswith(('rvsfit-cl', 'rvs-import'))):
            return
        self.programs.setdefault(name, []).append(where)

    def shell(self, src, where, line=1, c_strings=False):
        """Shell source: its command words and embedded Python. where: 'file' or 'file:line'."""
        self.shell_sources += 1
        try:
            toks = lex_shell(src, line)
        except ValueError as e:
            self.errors.append('%s: cannot read as shell (%s): fix the script or teach '
                               'tests/deps_check.py its syntax' % (where, e))
            return
        assignments = {}
        cmds = commands(toks, self.functions, assignments)
        pyvars = {v for v, vals in assignments.items() if any('python' in x.lower() for x in vals)}
        for c in cmds:
            self.command(c.words, c.heredocs, where, pyvars, c_strings)

    def command(self, words, heredocs, where, pyvars, c_strings):
        here = where if ':' in where else '%s:%d' % (where, words[0].line)
        w = words[0]
        t = w.text
        rest = words[1:]
        is_python = False
        if w.dynamic or (c_strings and '%' in t):
            m = re.match(r'\$\{?([A-Za-z_]\w*)', t)
            var = m.group(1) if m else ''
            is_python = (var in pyvars or re.fullmatch(r'(?i)py(thon)?3?', var) is not None
                         or (len(rest) > 1 and rest[0].text == '-c'
                             and re.match(r'\s*(import|from)\s', rest[1].text) is not None))
            if not is_python:
                return
        elif t in self.functions:
            # a helper that runs its arguments after '--' (lib.sh's run)
            for i, x in enumerate(rest):
                if x.text == '--' and not x.quoted and i + 1 < len(rest):
                    self.command(rest[i + 1:], heredocs, where, pyvars, c_strings)
                    break
            return
        elif t in WRAPPERS and not w.quoted:
            self.program_word(t, here)
            i = 0
            opts_with_arg = {'nice': '-n', 'timeout': '-s -k --signal --kill-after',
                             'xargs': '-I -n -P -L -d -s -E -a', 'env': '-u -C',
                             'stdbuf': '-i -o -e', 'sudo': '-u -g'}.get(t, '').split()
            if t == 'command' and rest and rest[0].text in ('-v', '-V'):
                return
            while i < len(rest) and (rest[i].text.startswith('-')
                                     or (t == 'env' and '=' in rest[i].text)):
                i += 2 if rest[i].text in opts_with_arg else 1
            if t == 'timeout' and i < len(rest):
                i += 1          # the duration
            if i < len(rest):
                self.command(rest[i:], heredocs, where, pyvars, c_strings)
            return
        elif not t:
            return
        else:
            name = os.path.basename(t) if t.startswith('/') else t
            is_python = re.fullmatch(r'python3(\.\d+)?', name) is not None
            self.program_word(t, here)
            if name in ('sh', 'bash', 'dash') and len(rest) > 1 and rest[0].text == '-c':
                self.shell(rest[1].text, here)
        if is_python:
            if len(rest) > 1 and rest[0].text == '-c':
                self.python(rest[1].text, here + ' (python -c)', True)
            elif rest and rest[0].text == '-':
                for h in heredocs:
                    self.python(h.body, here + ' (python heredoc)', True)

    # --- files
    def classify(self, path):
        """(kind, text) of a file: kind python, shell, make, c, or None (not scanned)."""
        name = os.path.basename(path)
        if name.endswith(('.log', '.trs', '.o', '.a', '.tmp', '.pyc', '.fits', '.md', '.txt')):
            return None, ''
        if os.path.exists(path + '.in') or os.path.exists(path + '.c'):
            return None, ''     # generated from PATH.in (scanned) or built from PATH.c
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            self.errors.append('%s: cannot read: %s' % (self.rel(path), e))
            return None, ''
        if b'\0' in data[:4096]:
            return None, ''     # a binary (a built test program)
        text = data.decode('utf-8', 'replace')
        first = text.split('\n', 1)[0]
        if 'Generated by libtool' in text[:1000]:
            return None, ''     # libtool's wrapper of a built program
        if name.endswith('.py') or (first.startswith('#!') and 'python' in first.lower()) \
                or first.startswith('#!@PYTHON3@'):
            return 'python', text
        if name.endswith('.am'):
            return 'make', text
        if name.endswith(('.c', '.h')):
            return 'c', text
        if name.endswith('.sh') or (first.startswith('#!') and re.search(r'\b(ba|da)?sh\b', first)):
            return 'shell', text
        return None, ''

    def makefile(self, text, rel):
        """Recipe lines and AM_TESTS_ENVIRONMENT of an automake file, as shell."""
        lines = text.split('\n')
        logical, k = [], 0
        while k < len(lines):
            start, ln = k + 1, lines[k]
            while ln.endswith('\\') and k + 1 < len(lines):
                k += 1
                ln = ln[:-1] + ' ' + lines[k].lstrip('\t')
            logical.append((start, ln))
            k += 1
        in_rule = False
        for start, ln in logical:
            if ln.startswith('\t') and in_rule:
                self.shell(self.make_to_shell(ln.lstrip('\t').lstrip('@-+')), rel, start)
                continue
            in_rule = False
            if ln.startswith('#') or not ln.strip():
                continue
            m = re.match(r'\s*AM_TESTS_ENVIRONMENT\s*\+?=(.*)', ln)
            if m:
                self.shell(self.make_to_shell(m.group(1)), rel, start)
            elif re.match(r'[^=\t#]*[^:=]:(?!=)', ln) and not ln.startswith(('if ', 'include ')):
                in_rule = True

    @staticmethod
    def make_to_shell(s):
        s = s.replace('$$', '\0')
        s = re.sub(r'\$[({]([A-Za-z_][\w.-]*)[)}]|\$[@<^*?%]', lambda m: '$MK_' + (
            re.sub(r'\W', '_', m.group(1)) if m.group(1) else 'AUTO'), s)
        return s.replace('\0', '$')

    def c_source(self, text, rel):
        """Shell command strings of a C test: snprintf/fmt/FMT(cmd..., "...") and system("...")."""
        lit = r'"(?:[^"\\\n]|\\.)*"'
        pat = re.compile(r'\b(?:(?:snprintf|fmt|FMT)\s*\(\s*(\w*cmd\w*)\s*,\s*'
                         r'(?:sizeof\s*\(?\s*\w+\s*\)?\s*,\s*)?|(?:system|popen)\s*\(\s*)'
                         r'((?:' + lit + r'\s*)+)')
        for m in pat.finditer(text):
            parts = re.findall(lit, m.group(2))
            s = ''.join(p[1:-1] for p in parts)
            s = re.sub(r'\\(.)', lambda e: {'n': '\n', 't': '\t'}.get(e.group(1), e.group(1)), s)
            line = text.count('\n', 0, m.start(2)) + 1
            self.shell(s, '%s:%d' % (rel, line), c_strings=True)

    def tree(self, extra):
        paths = []
        for d in SCAN_DIRS:
            top = os.path.join(self.srcdir, d)
            for root, dirs, files in os.walk(top):
                dirs[:] = sorted(x for x in dirs if not x.endswith('.tmp') and x not in SKIP_DIRS)
                paths += [os.path.join(root, f) for f in sorted(files)]
        paths += [os.path.join(self.srcdir, f) for f in SCAN_FILES
                  if os.path.exists(os.path.join(self.srcdir, f))]
        paths += extra
        files = [(p,) + self.classify(p) for p in paths]
        # functions first: a test calls what lib.sh defines
        for p, kind, text in files:
            if kind == 'shell':
                self.functions |= set(re.findall(r'^\s*([A-Za-z_][\w-]*)\s*\(\)', text, re.M))
        for p, kind, text in files:
            if kind is not None:
                {'python': self.python, 'shell': self.shell, 'make': self.makefile,
                 'c': self.c_source}[kind](text, self.rel(p))


def install_deps_packages(path):
    """The packages="..." list of tools/install-deps."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    m = re.search(r'^packages="([^"]*)"', text, re.M)
    if not m:
        sys.exit('deps_check: no packages="..." assignment in %s: the check follows that list; '
                 'keep it in that form' % path)
    return set(m.group(1).replace('\\\n', ' ').split())


def first_places(places, n=3):
    return ', '.join(sorted(set(places))[:n]) + (' ...' if len(set(places)) > n else '')


def main(argv):
    srcdir = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
    args = argv[1:]
    listing = False
    while args and args[0] in ('--srcdir', '--list'):
        if args[0] == '--list':
            listing, args = True, args[1:]
        elif len(args) >= 2:
            srcdir, args = args[1], args[2:]
        else:
            sys.exit('usage: deps_check.py [--srcdir DIR] [--list] [FILE...]')
    srcdir = os.path.abspath(srcdir)
    if not hasattr(sys, 'stdlib_module_names'):
        sys.exit('deps_check: %s is older than Python 3.10 (no sys.stdlib_module_names); run it '
                 'with Debian 12\'s /usr/bin/python3' % sys.executable)
    deps_path = os.path.join(srcdir, 'tools', 'install-deps')
    packages = install_deps_packages(deps_path)
    scan = Scan(srcdir)
    scan.tree([os.path.abspath(a) for a in args])
    errors = list(scan.errors)
    fix = 'add its Debian package to tools/install-deps and to the table in tests/deps_check.py'
    for mod, places in sorted(scan.modules.items()):
        pkg = MODULES.get(mod)
        if pkg is None:
            errors.append("%s imports '%s', which no package of tools/install-deps provides: %s "
                          "(MODULES)" % (first_places(places), mod, fix))
        elif pkg not in packages:
            errors.append("%s imports '%s' of %s, which tools/install-deps does not install: "
                          "add %s to its packages" % (first_places(places), mod, pkg, pkg))
    for prog, places in sorted(scan.programs.items()):
        if prog not in PROGRAMS:
            errors.append("%s calls '%s', which no package of tools/install-deps provides and "
                          "the base system lacks: %s (PROGRAMS), or name it in BASE if an "
                          "Essential or required package has it" % (first_places(places), prog,
                                                                     fix))
        elif PROGRAMS[prog] is not None and PROGRAMS[prog] not in packages:
            errors.append("%s calls '%s' of %s, which tools/install-deps does not install: add "
                          "%s to its packages" % (first_places(places), prog, PROGRAMS[prog],
                                                  PROGRAMS[prog]))
    # what install-deps provides must also be there: a machine that has not run it since the
    # list grew fails here, with the remedy, rather than in the tests that use the module
    for mod in sorted(scan.modules):
        if MODULES.get(mod) in packages:
            try:
                importlib.import_module(mod)
            except ImportError as e:
                errors.append('%s cannot import %s (%s): run tools/install-deps (it installs %s), '
                              'or configure with PYTHON3=/usr/bin/python3 (Debian\'s interpreter)'
                              % (sys.executable, mod, e, MODULES[mod]))
    for n in scan.notes:
        print('note: ' + n)
    if listing:
        for what, found in (('module', scan.modules), ('program', scan.programs)):
            for name, places in sorted(found.items()):
                print('%s %s: %s' % (what, name, ', '.join(sorted(set(places)))))
    third = sorted(scan.modules)
    extra = sorted(p for p in scan.programs if PROGRAMS.get(p))
    print('deps_check: %d Python sources (files and embedded), %d shell sources (scripts, make '
          'recipes, C command strings); third-party modules: %s; programs beyond the base '
          'system: %s; install-deps: %d packages'
          % (scan.python_sources, scan.shell_sources, ', '.join(third) or 'none',
             ', '.join(extra) or 'none', len(packages)))
    for e in errors:
        print('FAIL: ' + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
