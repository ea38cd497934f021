# setup.py for an nbdev 2 project: metadata comes from settings.ini.
# The distribution is `safety-compass-observability` (PyPI's `safety-compass` is an unrelated 0.1.x project that also
# installs a top-level `safety_compass`); the import package is `safety_compass`.
# The repository's configs/ and data/ are installed inside the package as safety_compass/_root/{configs,data},
# so `pip install .` users get the bundled concepts, pair files and the demo.
import os, shlex
from configparser import ConfigParser
from pathlib import Path
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="]); cfg.read(here / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

def reqs(key): return shlex.split(cfg.get(key, "").strip())

EXTRAS = ("gpu", "data", "viz", "dev", "demo", "trl")
for x in EXTRAS:
    if not reqs(f"{x}_requirements"): raise SystemExit(f"settings.ini: {x}_requirements is missing or empty")

def tree(top):
    "Package names and data globs for every directory under `top` (they have no __init__.py)."
    pkgs, data = {}, {}
    for d, _, files in os.walk(here / top):
        rel = Path(d).relative_to(here)
        name = "safety_compass._root." + ".".join(rel.parts)
        pkgs[name] = str(rel)
        data[name] = [f for f in files if not f.startswith(".")]
    return pkgs, data

pkg_dirs, pkg_data = {}, {}
for top in ("configs", "data"):
    p, d = tree(top); pkg_dirs.update(p); pkg_data.update(d)

setuptools.setup(
    name=cfg["lib_name"], version=cfg["version"], description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"], author_email=cfg["author_email"], url=cfg["git_url"],  # license: pyproject.toml (SPDX)
    keywords=cfg["keywords"].split(), python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=["safety_compass", "safety_compass.*"]) + list(pkg_dirs),
    package_dir=pkg_dirs, package_data=pkg_data, include_package_data=True, zip_safe=False,
    install_requires=reqs("requirements"),
    # the extras the published README names ([gpu], [data], [viz], [dev]) plus [demo] (the embedded GGUF) and [trl]
    extras_require={x: reqs(f"{x}_requirements") for x in EXTRAS},
    entry_points={"console_scripts": cfg.get("console_scripts").split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    classifiers=["Programming Language :: Python :: 3",
                 "Intended Audience :: Science/Research", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
