"""A seeded static site and one release of it: the input of the wildcard-planner benchmark.

``build_site(files, changed, seed)`` returns the site's file list (the manifest) and the files
a release changes, shaped like a static-site generator's output (Hugo, Eleventy, Next export):

* pages: ``<section>/<slug>/index.html`` with pretty URLs, in 8 sections of uneven size
  (``blog`` by year, ``docs`` by chapter, ``products`` by category...), plus each section's
  pagination (``<section>/page/N/index.html``) and tag pages (``tags/<tag>/index.html``);
* images: each page's images and their resized variants,
  ``images/<section>/<slug>/img<N>-<w>w.webp`` (zero to six images, three widths each);
* assets: content-hashed bundles, ``assets/js/<name>.<hash>.js``, ``assets/css/...``,
  ``assets/fonts/...``;
* top level: ``index.html``, ``robots.txt``, ``sitemap-N.xml``, ``feed/<section>.xml``.

As many pages are made as 45 % of ``files``; with their images that overshoots, and a random
``files`` of the paths are kept. At 50,000 files: 7,588 pages (15 %), 41,137 images (82 %),
1,256 assets, 19 top-level files, in 23,646 directories.

A release mixes what changes a real one: a template edit re-renders every page of three sections
(pages only, not their images), an image pipeline change re-encodes the images of
some pages, content edits touch single pages and their images scattered over every section,
every tag page and pagination is re-rendered, a quarter of the assets change, and the top
level. The total is trimmed or topped up at random to exactly ``changed`` files: at 10,000 of
50,000, 4,077 pages, 5,550 images, 354 assets and the 19 top-level files.
"""

from __future__ import annotations

import random

SECTIONS = {  # name -> (weight of the pages, sub-directory levels, e.g. blog/2021/slug)
    "blog": (30, ("2019", "2020", "2021", "2022", "2023", "2024", "2025")),
    "docs": (25, ("getting-started", "guides", "reference", "api", "cli", "faq")),
    "products": (12, ("cameras", "lenses", "lights", "audio", "bags")),
    "news": (10, ()),
    "help": (8, ("billing", "account", "shipping")),
    "events": (6, ()),
    "careers": (4, ()),
    "about": (5, ()),
}
WIDTHS = ("480", "960", "1920")


def build_site(
    files: int = 50_000, changed: int = 10_000, seed: int = 27
) -> tuple[list[str], list[str]]:
    """The manifest (``files`` paths, shuffled) and the ``changed`` paths of one release."""
    rng = random.Random(seed)
    pages: dict[str, list[str]] = {}  # section -> its page directories
    images: dict[str, list[str]] = {}  # page directory -> its image files
    manifest: list[str] = []
    target_pages = files * 45 // 100
    weights = sum(w for w, _ in SECTIONS.values())
    # Pages and their images.
    for section, (weight, subs) in SECTIONS.items():
        count = max(1, target_pages * weight // weights)
        dirs = pages.setdefault(section, [])
        for i in range(count):
            sub = f"{rng.choice(subs)}/" if subs else ""
            page = f"{section}/{sub}{_slug(rng)}-{i}/"
            dirs.append(page)
            manifest.append(page + "index.html")
            imgs = images.setdefault(page, [])
            for n in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 6))):
                for w in WIDTHS:
                    imgs.append(f"images/{page}img{n}-{w}w.webp")
            manifest.extend(imgs)
        for n in range(2, count // 10 + 2):
            manifest.append(f"{section}/page/{n}/index.html")
    tags = [f"tags/{_slug(rng)}-{i}/index.html" for i in range(max(1, files // 250))]
    manifest.extend(tags)
    # Assets, then the top level, then trim or pad with more images to the exact size.
    assets = []
    for kind, ext, share in (("js", "js", 5), ("css", "css", 2), ("fonts", "woff2", 1)):
        for i in range(files * share // 100):
            assets.append(f"assets/{kind}/{_slug(rng)}-{i}.{rng.getrandbits(32):08x}.{ext}")
    manifest.extend(assets)
    top = ["index.html", "404.html", "robots.txt"]
    top += [f"sitemap-{i}.xml" for i in range(files // 2000 + 1)]
    top += [f"feed/{s}.xml" for s in SECTIONS]
    manifest.extend(top)
    manifest = list(dict.fromkeys(manifest))
    rng.shuffle(manifest)
    if len(manifest) > files:
        manifest = manifest[:files]
    n = 0
    while len(manifest) < files:
        manifest.append(f"images/extra/{n // 500}/img{n}.webp")
        n += 1
    present = set(manifest)

    # The release.
    release: dict[str, None] = {}

    def add(paths: list[str]) -> None:
        release.update(dict.fromkeys(p for p in paths if p in present))

    for section in rng.sample(sorted(SECTIONS), 3):  # a template edit
        add([p + "index.html" for p in pages[section]])
    add(tags)
    add([p for p in manifest if "/page/" in p])
    every = [p for ps in pages.values() for p in ps]
    for page in rng.sample(every, len(every) // 12):  # re-encoded images
        add(images[page])
    for page in rng.sample(every, len(every) // 20):  # content edits
        add([page + "index.html", *images[page][:3]])
    add(rng.sample(assets, len(assets) // 4))
    add(top)
    out = list(release)
    rng.shuffle(out)
    if len(out) > changed:
        out = out[:changed]
    else:
        rest = [p for p in manifest if p not in release]
        out += rng.sample(rest, changed - len(out))
    return manifest, out


def _slug(rng: random.Random) -> str:
    words = ("alpha", "brave", "cedar", "delta", "ember", "fable", "grove", "harbor", "iris")
    return "-".join(rng.choice(words) for _ in range(2))
