"""Edit notebooks as plain text, keeping cell ids and stored outputs.

    python tools/nbtext.py to nbs/05_directions.ipynb [out.txt]   # notebook -> text (default /tmp/nbtext/<name>.txt)
    python tools/nbtext.py from out.txt nbs/05_directions.ipynb    # text -> notebook (created if missing)

In the text form each cell starts with a line `# ---- cell: <type> <id>` (type: code, markdown or raw). A cell
written as `# ---- cell: code new` gets a fresh id. Cells whose id is kept keep their stored outputs (re-execute the
notebook with tools/execute_nbs.py to refresh them); deleted cells disappear. The notebook's own metadata is kept.
"""
import json, re, sys, uuid
from pathlib import Path

MARK = "# ---- cell: "
_HEAD = re.compile(r"^# ---- cell: (code|markdown|raw) (\S+)\s*$")

def to_text(nb_path) -> str:
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        parts.append(f"{MARK}{c['cell_type']} {c.get('id') or 'new'}\n{src}\n")
    return "".join(parts)

def _split_lines(s):
    lines = s.splitlines(keepends=True)
    return lines

def from_text(text: str, nb_path):
    nb_path = Path(nb_path)
    if nb_path.exists(): nb = json.loads(nb_path.read_text(encoding="utf-8"))
    else:
        nb = {"cells": [], "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
              "nbformat": 4, "nbformat_minor": 5}
    old = {c.get("id"): c for c in nb["cells"]}
    cells, cur, body = [], None, []
    def flush():
        if cur is None: return
        typ, cid = cur
        src = "".join(body)
        if src.endswith("\n"): src = src[:-1]
        if cid == "new" or cid in seen: cid = uuid.uuid4().hex[:8]
        seen.add(cid)
        c = dict(old.get(cid) or {})
        c.update(cell_type=typ, id=cid, metadata=c.get("metadata", {}), source=_split_lines(src))
        if typ == "code":
            c.setdefault("outputs", []); c.setdefault("execution_count", None)
        else:
            c.pop("outputs", None); c.pop("execution_count", None)
        cells.append(c)
    seen = set()
    for line in text.splitlines(keepends=True):
        m = _HEAD.match(line.rstrip("\n"))
        if m:
            flush(); cur, body = (m.group(1), m.group(2)), []
        elif cur is not None: body.append(line)
    flush()
    nb["cells"] = cells
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("to", "from"): sys.exit(__doc__)
    if sys.argv[1] == "to":
        out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/tmp/nbtext") / (Path(sys.argv[2]).stem + ".txt")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_text(sys.argv[2]), encoding="utf-8"); print(out)
    else:
        from_text(Path(sys.argv[2]).read_text(encoding="utf-8"), sys.argv[3]); print(sys.argv[3])
