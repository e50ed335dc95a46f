"""Build a project's `dvc plots show` page for offline viewing, then check in headless Chromium that
every plot rendered, and optionally take a screenshot.

DVC's HTML page loads Vega, Vega-Lite and vega-embed from a CDN, so it shows nothing without
internet. This script fetches the three libraries once from the npm registry (`npm pack`) into a
cache folder outside the project, writes an HTML template there that inlines them, and runs
`dvc plots show --html-template` with it. The browser check then loads the page with every host
name unresolvable, so a plot that still needed the network would fail it.

    python scripts/check_plots.py                       # this project: dvc_plots/index.html, checked
    python scripts/check_plots.py --no-browser          # only build the offline page
    python scripts/check_plots.py --screenshot docs/plots.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.errors import SqltuneError, run_main  # noqa: E402
from sqltune.io import atomic_file  # noqa: E402

# npm package spec -> the browser build it ships (a UMD file: vega-lite and vega-embed find vega,
# and vega-embed finds vega-lite, as page globals).
PACKAGES = {"vega@5": "vega.min.js", "vega-lite@5": "vega-lite.min.js", "vega-embed@6": "vega-embed.min.js"}
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sqltune" / "vega"
TEMPLATE_NAME = "offline-template.html"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# DVC's bar and line charts are about this size with their titles and axes; the page lays them out
# in rows, so the screenshot's height follows from the number of rows.
CELL_WIDTH, CELL_HEIGHT = 560, 440
TIMEOUT_S = 180

# DVC fills {plot_divs}; its {scripts} placeholder (the CDN tags) is left out on purpose.
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots</title>
{libraries}
<style>
  body {{ font-family: sans-serif; margin: 16px; }}
  .plots {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
</style>
</head>
<body>
<div class="plots">
{{plot_divs}}
</div>
</body>
</html>
"""


def _run(cmd: list[str], cwd: Path | None = None, what: str = "") -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SqltuneError(f"{what or cmd[0]} ran longer than {TIMEOUT_S}s; check that it works when run by hand: "
                           f"{' '.join(cmd)}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SqltuneError(f"{what or cmd[0]} failed ({last}); fix that, then run this again")
    return proc


def vendor_libraries(cache: Path) -> dict[str, Path]:
    """{file name: path} of the three browser builds in ``cache``, fetched with npm when missing."""
    files = {name: cache / name for name in PACKAGES.values()}
    if all(f.is_file() for f in files.values()):
        return files
    npm = shutil.which("npm")
    if npm is None:
        raise SqltuneError(f"npm is not installed and {cache} lacks {', '.join(files)}; install npm "
                           f"(apt-get install npm) or copy those files from the packages' build/ folders into {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        packed = json.loads(_run([npm, "pack", "--json", "--pack-destination", tmp, *PACKAGES], what="npm pack").stdout)
        for entry, name in zip(packed, PACKAGES.values()):
            with tarfile.open(Path(tmp) / entry["filename"]) as tar:
                member = tar.extractfile(f"package/build/{name}")
                if member is None:
                    raise SqltuneError(f"{entry['filename']} has no build/{name}; pin a release that ships it "
                                       f"in PACKAGES of {Path(__file__).name}")
                with atomic_file(files[name]) as part:
                    part.write_bytes(member.read())
    return files


def write_template(cache: Path) -> Path:
    """The offline HTML template in ``cache``: the three libraries inline, in load order."""
    libraries = {name: path.read_text(encoding="utf-8") for name, path in vendor_libraries(cache).items()}
    for name, code in libraries.items():
        if "</script" in code.lower():  # it would end the inline script early
            raise SqltuneError(f"{cache / name} holds '</script'; replace it with the package's own build/{name}")
    scripts = "\n".join(f"<script>\n{code}\n</script>" for code in libraries.values())
    template = cache / TEMPLATE_NAME
    with atomic_file(template) as tmp:
        tmp.write_text(PAGE.format(libraries=scripts), encoding="utf-8")
    return template


def dvc(project: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd=project, what=f"dvc {args[0]} {args[1]}").stdout


def plot_titles(project: Path) -> dict[str, str]:
    """{plot name: title} from `dvc plots show --json`; refuses a plot DVC could not load, one with
    no data and one with no title."""
    shown = json.loads(dvc(project, "plots", "show", "--json"))
    if shown.get("errors"):
        e = shown["errors"][0]
        raise SqltuneError(f"dvc could not load plot {e.get('name')!r} ({e.get('source', '')}: {e.get('msg')}); "
                           "run the stage that writes it (dvc repro) or fix its entry in dvc.yaml's plots")
    titles = {}
    for name, renders in shown.get("data", {}).items():
        for r in renders:
            if r.get("type") != "vega":
                continue
            content = r["content"]
            title = content.get("title")
            title = title.get("text") if isinstance(title, dict) else title  # vega-lite takes both forms
            if not content.get("data", {}).get("values"):
                raise SqltuneError(f"plot {name!r} has no data; run the stage that writes it (dvc repro)")
            if not title:
                raise SqltuneError(f"plot {name!r} has no title; give it a title in dvc.yaml's plots")
            titles[name] = title
    if not titles:
        raise SqltuneError(f"{project} has no plots; define them in dvc.yaml's plots section")
    return titles


class _Divs(HTMLParser):
    """Per div id: whether a script in it calls vegaEmbed (a plot's container on DVC's page) and
    whether it holds a canvas or an svg (a drawn chart, once vega-embed has replaced the script)."""

    def __init__(self):
        super().__init__()
        self.stack: list[str | None] = []  # ids of the open divs
        self.in_script = False
        self.embeds: set[str] = set()
        self.charts: set[str] = set()

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            self.stack.append(dict(attrs).get("id"))
        elif tag == "script":
            self.in_script = True
        elif tag in ("canvas", "svg"):
            self.charts.update(div for div in self.stack if div)

    def handle_endtag(self, tag):
        if tag == "div" and self.stack:
            self.stack.pop()
        elif tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script and "vegaEmbed(" in data and self.stack and self.stack[-1]:
            self.embeds.add(self.stack[-1])


def _divs(html: str) -> _Divs:
    parser = _Divs()
    parser.feed(html)
    return parser


def undrawn_plots(page_html: str, dom: str) -> tuple[list[str], list[str]]:
    """(the plot containers of DVC's page, those of them that hold no chart in the rendered DOM)."""
    plots = sorted(_divs(page_html).embeds)
    drawn = _divs(dom).charts
    return plots, [p for p in plots if p not in drawn]


def find_chromium(given: str | None) -> str:
    found = shutil.which(given) if given else next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        raise SqltuneError(f"no Chromium found ({given or ', '.join(CHROMIUM_NAMES)}); install it "
                           "(apt-get install chromium), pass --chromium PATH, or run with --no-browser")
    return found


def chromium(binary: str, page: Path, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        return _run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any network fetch fails
                     f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args, page.as_uri()],
                    what="chromium").stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", nargs="?", default=".", help="the DVC project (default: the current folder)")
    ap.add_argument("--out", help="folder for the page (default: dvc_plots in the project, DVC's own default)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the libraries and the template are kept")
    ap.add_argument("--no-browser", action="store_true", help="only build the offline page")
    ap.add_argument("--chromium", help=f"the Chromium binary (default: the first of {', '.join(CHROMIUM_NAMES)} on PATH)")
    ap.add_argument("--screenshot", help="PNG file for a screenshot of the whole page")
    ap.add_argument("--columns", type=int, default=3, help="plots per row on the page's screenshot")
    args = ap.parse_args()

    project = Path(args.project).resolve()
    if not (project / "dvc.yaml").is_file():
        raise SqltuneError(f"{project} has no dvc.yaml; give the DVC project's folder")
    if args.columns < 1:
        raise SqltuneError(f"--columns {args.columns} is not positive; give 1 or more")
    out = Path(args.out).resolve() if args.out else project / "dvc_plots"
    titles = plot_titles(project)
    template = write_template(Path(args.cache).expanduser().resolve())
    dvc(project, "plots", "show", "--html-template", str(template), "-o", str(out))
    page = out / "index.html"
    if "cdn.jsdelivr" in page.read_text(encoding="utf-8"):
        raise SqltuneError(f"{page} still loads scripts from a CDN; the template {template} must not hold {{scripts}}")
    print(f"check_plots: {len(titles)} plots, offline page {page}")
    if args.no_browser:
        return
    binary = find_chromium(args.chromium)
    plots, undrawn = undrawn_plots(page.read_text(encoding="utf-8"), chromium(binary, page, "--dump-dom"))
    if len(plots) != len(titles) or undrawn:
        raise SqltuneError(f"{len(plots) - len(undrawn)} of {len(titles)} plots rendered in Chromium (not drawn: "
                           f"{', '.join(undrawn) or 'absent from the page'}); open {page} in a browser and "
                           "check its console for the chart's error")
    print(f"check_plots: every plot rendered in headless Chromium ({len(plots)} charts)")
    if args.screenshot:
        shot = Path(args.screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        width = args.columns * CELL_WIDTH + 40
        height = math.ceil(len(plots) / args.columns) * CELL_HEIGHT + 40
        chromium(binary, page, f"--screenshot={shot}", f"--window-size={width},{height}", "--hide-scrollbars")
        if not shot.is_file():
            raise SqltuneError(f"chromium wrote no screenshot to {shot}; check that its folder is writable")
        print(f"check_plots: screenshot {shot}")


if __name__ == "__main__":
    run_main(main)
