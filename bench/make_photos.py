"""512x384 photos from skimage/sklearn bundled data, in class subfolders (imagefolder layout)."""
import sys
from pathlib import Path
import numpy as np
from PIL import Image
import skimage.data as d
from sklearn.datasets import load_sample_images

root = Path(sys.argv[1])
sk = load_sample_images()
imgs = {Path(f).stem: im for f, im in zip(sk.filenames, sk.images)}
for n in ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "cat", "camera", "coins", "moon", "page", "text"]:
    try:
        imgs[n] = getattr(d, n)()
    except Exception as e:
        print("skip", n, e)
W, H = 512, 384
for name, full in imgs.items():
    img = Image.fromarray(full).convert("RGB")
    for v, (flip, crop) in enumerate([(False, 0.0), (True, 0.0), (False, 0.15), (True, 0.3)]):
        w, h = img.size
        # centre crop to 4:3 after trimming `crop` of the shorter side
        cw, ch = (w, int(w * 3 / 4)) if w * 3 / 4 <= h else (int(h * 4 / 3), h)
        cw, ch = int(cw * (1 - crop)), int(ch * (1 - crop))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        view = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((W, H), Image.Resampling.LANCZOS)
        if flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = root / name / f"{name}_{v}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        view.save(out)
print(len(imgs), "photos")
