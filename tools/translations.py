"""QuickSAM's translations: the message files for translators and the compiled files the plugin loads.

    python tools/translations.py update LANG [LANG ...] [--folder i18n]   write/refresh i18n/quicksam_LANG.ts
    python tools/translations.py build [--folder i18n]                    i18n/*.ts -> i18n/*.qm (lrelease)

`update` collects every `tr("…")` of the plugin's Python code (context "QuickSAM", see ui/i18n.py)
and every string of its Qt Designer forms (context: the form's class, as uic translates them), and
keeps the translations already made; a message that left the code is kept as "vanished" (lrelease
skips it). pylupdate5 is not used: it would file module-level `tr` calls under the wrong context.
`build` runs Qt's `lrelease` (Debian: qttools5-dev-tools). Translators edit the .ts files with Qt
Linguist or any text editor; the .qm files are committed, since the plugin zip is built from git.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = "QuickSAM"  # ui/i18n.CONTEXT (not imported: it needs QGIS)
SKIPPED = {"tests", "tools", "bench", "docs", ".venv", ".git", ".stamps", "dist", "i18n"}
LRELEASE_NAMES = ("lrelease", "lrelease-qt5", "lrelease-qt6", "pyside6-lrelease")
LRELEASE_PATHS = ("/usr/lib/qt5/bin/lrelease", "/usr/lib/qt6/bin/lrelease")

#: (context, source text) -> (file, line) of its first use
Messages = Dict[Tuple[str, str], Tuple[str, int]]


def plugin_files(root: Path, suffix: str) -> Iterator[Path]:
    for path in sorted(root.rglob(f"*{suffix}")):
        if not SKIPPED & set(path.relative_to(root).parts):
            yield path


def python_messages(path: Path, root: Path) -> Messages:
    """Every `tr("literal")` / `x.tr("literal")` call of one Python file."""
    found: Messages = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        text = node.args[0]
        if name == "tr" and isinstance(text, ast.Constant) and isinstance(text.value, str):
            found.setdefault((CONTEXT, text.value), (path.relative_to(root).as_posix(), node.lineno))
    return found


def form_messages(path: Path, root: Path) -> Messages:
    """Every translatable <string> of one Qt Designer form, in the form's context (its <class>)."""
    tree = ElementTree.parse(path)
    context = tree.getroot().findtext("class") or path.stem
    found: Messages = {}
    for element in tree.iter("string"):
        if element.text and element.get("notr") != "true":
            found.setdefault((context, element.text), (path.relative_to(root).as_posix(), 0))
    return found


def collect_messages(root: Path = ROOT) -> Messages:
    messages: Messages = {}
    for path in plugin_files(root, ".py"):
        messages.update({k: v for k, v in python_messages(path, root).items() if k not in messages})
    for path in plugin_files(root, ".ui"):
        messages.update({k: v for k, v in form_messages(path, root).items() if k not in messages})
    return messages


def read_translations(ts_file: Path) -> Dict[Tuple[str, str], str]:
    """(context, source) -> translation already in a .ts file (empty ones left out)."""
    if not ts_file.exists():
        return {}
    done = {}
    for context in ElementTree.parse(ts_file).getroot().iter("context"):
        name = context.findtext("name") or ""
        for message in context.iter("message"):
            translation = message.findtext("translation") or ""
            if translation:
                done[(name, message.findtext("source") or "")] = translation
    return done


def ts_tree(language: str, messages: Messages, done: Dict[Tuple[str, str], str]) -> ElementTree.ElementTree:
    root = ElementTree.Element("TS", version="2.1", language=language)
    for context in sorted({c for c, _ in messages} | {c for c, _ in done}):
        node = ElementTree.SubElement(root, "context")
        ElementTree.SubElement(node, "name").text = context
        sources = sorted({s for c, s in messages if c == context} | {s for c, s in done if c == context})
        for source in sources:
            message = ElementTree.SubElement(node, "message")
            if (context, source) in messages:
                filename, line = messages[(context, source)]
                ElementTree.SubElement(message, "location", filename=f"../{filename}", line=str(line))
            ElementTree.SubElement(message, "source").text = source
            translation = ElementTree.SubElement(message, "translation")
            translation.text = done.get((context, source), "")
            if (context, source) not in messages:
                translation.set("type", "vanished")
            elif not translation.text:
                translation.set("type", "unfinished")
    ElementTree.indent(root)
    return ElementTree.ElementTree(root)


def update(languages: List[str], folder: Path, root: Path = ROOT) -> List[Path]:
    """Write (or refresh) `folder/quicksam_<language>.ts` for each language; the files written."""
    messages = collect_messages(root)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for language in languages:
        path = folder / f"quicksam_{language}.ts"
        tree = ts_tree(language, messages, read_translations(path))
        with path.open("wb") as out:
            out.write(b'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE TS>\n')
            tree.write(out, encoding="utf-8", xml_declaration=False)
        written.append(path)
    return written


def find_lrelease() -> Optional[str]:
    for name in LRELEASE_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    return next((path for path in LRELEASE_PATHS if Path(path).exists()), None)


def build(folder: Path) -> List[Path]:
    """Compile every `folder/*.ts` into the .qm beside it with lrelease; the .qm files."""
    lrelease = find_lrelease()
    if lrelease is None:
        raise SystemExit("translations: lrelease not found; install Qt's tools (Debian: qttools5-dev-tools)")
    built = []
    for ts_file in sorted(folder.glob("*.ts")):
        qm_file = ts_file.with_suffix(".qm")
        subprocess.run([lrelease, "-silent", str(ts_file), "-qm", str(qm_file)], check=True)
        built.append(qm_file)
    return built


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("update", "build"))
    parser.add_argument("languages", nargs="*", help="for update: language codes such as de or pt_BR")
    parser.add_argument("--folder", type=Path, default=ROOT / "i18n")
    args = parser.parse_args(argv)
    if args.command == "update":
        if not args.languages:
            parser.error("update needs at least one language code")
        paths = update(args.languages, args.folder)
    else:
        paths = build(args.folder)
    sys.stdout.write("".join(f"{path}\n" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
