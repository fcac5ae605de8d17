#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a loop.

Modules import downward only: a helper two modules both need moves down into
a module of its own instead of one importing the other back. This reads every
`src/` tree of the workspace, resolves each `crate::`, `super::` and `self::`
path (through `pub use` re-exports, so `crate::Error` counts as an import of
the module that defines it) to the module it names, and reports every loop of
the resulting graph with the lines that make it.

A module and its own ancestors are not a loop: `store/mod.rs` re-exporting
`store::changes` while `changes` uses `super::Store` is one module's inside.
Comments and string literals are ignored.

    python3 .ci/module-loops.py [CRATE_SRC ...]   # default: every crate's src/
    python3 .ci/module-loops.py --self-test
"""

import pathlib
import re
import sys
import tempfile

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks comments and string literals, keeping line numbers."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text[i] == '"' or text.startswith('r#"', i) or text.startswith('br#"', i) or text.startswith('b"', i):
            start = text.index('"', i)
            hashes = text[i:start].count("#")
            end_quote = '"' + "#" * hashes
            j = start + 1
            while j < n:
                if hashes == 0 and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(end_quote, j):
                    break
                j += 1
            j = min(n, j + len(end_quote))
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif text[i] == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:i + 4])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def module_of(src, path):
    """`gateway/src/quarantine/cli.rs` -> ('quarantine', 'cli')."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def expand_use_tree(tree):
    """`crate::{a::{B, C as D}, d}` -> ['crate::a::B', 'crate::a::C@D', 'crate::d']
    (an alias follows `@`)."""
    tree = re.sub(r"\s+as\s+", "@", tree)
    tree = re.sub(r"\s+", "", tree)

    def expand(s):
        depth, start, items = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:k])
                start = k + 1
        items.append(s[start:])
        paths = []
        for item in filter(None, items):
            brace = item.find("{")
            if brace < 0:
                paths.append(item)
                continue
            prefix, inner = item[:brace], item[brace + 1:item.rindex("}")]
            for rest in expand(inner):
                paths.append(prefix + rest if not rest.startswith("self") else prefix.rstrip(":") + rest[4:])
        return paths

    return expand(tree)


def resolve_relative(module, path):
    """A path as written in `module` -> segments from the crate root, or None
    when it does not start inside the crate."""
    segments = [s for s in path.split("::") if s]
    if not segments:
        return None
    if segments[0] == "crate":
        return segments[1:]
    base = list(module)
    if segments[0] == "self":
        return base + segments[1:]
    if segments[0] == "super":
        while segments and segments[0] == "super":
            if not base:
                return None
            base.pop()
            segments = segments[1:]
        return base + segments
    return None


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}
        for path in sorted(src.rglob("*.rs")):
            if path.name == "main.rs" and path.parent == src and (src / "lib.rs").exists():
                continue  # the binary is its own crate
            self.files[module_of(src, path)] = (path, strip_comments_and_strings(path.read_text()))
        self.modules = set(self.files)
        self.reexports = {}  # (module, name) -> segments from the root
        self.references = {}  # module -> [(segments, line)]
        for module, (_, text) in self.files.items():
            refs = []
            for m in re.finditer(r"\b(pub(\([^)]*\))?\s+)?use\s+([^;]+);", text):
                line = text.count("\n", 0, m.start()) + 1
                for path in expand_use_tree(m.group(3)):
                    path, _, alias = path.partition("@")
                    segments = resolve_relative(module, path)
                    if segments is None:
                        # `use child::X` names a child module of this one.
                        first = path.split("::")[0]
                        if module + (first,) in self.modules:
                            segments = list(module) + path.split("::")
                        else:
                            continue
                    refs.append((segments, line))
                    if m.group(1) and segments:
                        name = alias or segments[-1]
                        if name not in ("*", "self"):
                            self.reexports[(module, name)] = segments
            for m in re.finditer(r"\b(?:crate|super|self)(?:::" + IDENT + ")+", text):
                line = text.count("\n", 0, m.start()) + 1
                segments = resolve_relative(module, m.group(0))
                if segments is not None:
                    refs.append((segments, line))
            self.references[module] = refs

    def target(self, segments, seen=()):
        """The module a path from the root lands in, through re-exports."""
        module = ()
        for k, segment in enumerate(segments):
            if module + (segment,) in self.modules:
                module = module + (segment,)
                continue
            via = self.reexports.get((module, segment))
            if via is not None and tuple(via) not in seen:
                return self.target(list(via) + list(segments[k + 1:]), seen + (tuple(via),))
            return module
        return module

    def edges(self):
        graph = {}
        for module, refs in self.references.items():
            for segments, line in refs:
                target = self.target(segments)
                related = target[:len(module)] == module or module[:len(target)] == target
                if related:
                    continue  # itself, an ancestor or a descendant
                graph.setdefault(module, {}).setdefault(target, line)
        return graph


def loops(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def name(module):
    return "::".join(module) or "crate"


def check(src):
    crate = Crate(src)
    graph = crate.edges()
    problems = []
    for component in loops(graph):
        members = set(component)
        lines = [f"  loop in {src}: {' <-> '.join(name(m) for m in component)}"]
        for module in component:
            path = crate.files[module][0]
            for target, line in sorted(graph.get(module, {}).items()):
                if target in members:
                    lines.append(f"    {path}:{line} ({name(module)}) uses {name(target)}")
        problems.append("\n".join(lines))
    return problems


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "src"
        (src / "quarantine").mkdir(parents=True)
        (src / "lib.rs").write_text("pub mod config;\npub mod quarantine;\npub use config::Config;\n")
        (src / "config.rs").write_text(
            '//! uses crate::quarantine::cli in a comment only\n'
            'use crate::{quarantine::cli::Command, other};\npub struct Config;\n')
        (src / "quarantine" / "mod.rs").write_text("pub mod cli;\npub struct Quarantine;\n")
        (src / "quarantine" / "cli.rs").write_text(
            'use super::Quarantine;\nconst S: &str = "crate::config";\n'
            'pub fn run(_: &crate::Config) {}\npub enum Command {}\n')
        found = check(src)
        assert len(found) == 1 and "config <-> quarantine::cli" in found[0], found
        # Through the root re-export, on its line.
        assert "cli.rs:3" in found[0], found[0]
        # Breaking the back edge breaks the loop; parent <-> child is no loop.
        (src / "quarantine" / "cli.rs").write_text(
            "use super::Quarantine;\npub fn run(_: &Quarantine) {}\npub enum Command {}\n")
        assert check(src) == [], check(src)
        # A comment or a string naming a module is no import.
        (src / "quarantine" / "cli.rs").write_text(
            '/* crate::config */ const S: &str = "crate::Config";\npub enum Command {}\n')
        assert check(src) == [], check(src)
    print("module-loops self-test: ok")


def main(args):
    if args == ["--self-test"]:
        self_test()
        return 0
    root = pathlib.Path(__file__).resolve().parent.parent
    sources = [pathlib.Path(a) for a in args] or sorted(
        p.parent for p in root.glob("**/src/lib.rs") if "target" not in p.parts)
    problems = [p for src in sources for p in check(src)]
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} import loop(s): move what both sides need into a module of its own")
        return 1
    print(f"no import loops in {len(sources)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
