"""Drop image outputs from executed notebooks (the golden copies): nbval skips them and they would bloat git."""
import sys

import nbformat

for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                for key in [k for k in out.get("data", {}) if k.startswith("image/")]:
                    del out["data"][key]
    nbformat.write(nb, path)
    print("stripped images from", path)
