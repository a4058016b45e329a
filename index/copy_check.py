"""Is image B a copy of image A? A content-blind check on the pixels, beside the embedding: ORB
keypoints of both (at most MAX_SIDE px a side, in grey), matched with Lowe's ratio test, a
similarity transform (scale, rotation, shift: what resizing, cropping, rotating and framing do)
fitted with RANSAC, and then the normalised cross-correlation (NCC) of A warped onto B with B, over
the area they share, after a light blur (JPEG noise). B is also tried mirrored.

A copy aligns almost perfectly (NCC 0.95-1.0 for re-encoded, resized, cropped, mirrored, rotated,
brightened and framed copies); two photos of one bird species, or two people's drawings of one
character, may share keypoints but not pixels (NCC below 0.8 measured on cub100 and omniglot;
docs/duplicates.md). The threshold on the NCC is calibrated per gallery (index/calibration.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MAX_SIDE = 384
FEATURES = 500
RATIO = 0.8
RANSAC_PX = 6.0
#: Below this many matches no transform is fitted (3 fix a similarity; fewer than 8 is chance).
MIN_MATCHES = 8
#: The overlap must cover this share of the smaller picture, else the NCC is not taken.
MIN_OVERLAP = 0.2
NO_MATCH = -1.0


def grey(data: bytes, name: str = "image") -> np.ndarray:
    """A picture file -> uint8 grey, at most MAX_SIDE px a side (small pictures are enlarged to it:
    ORB needs some pixels). ImageDecodeError for a bad file."""
    from PIL import Image

    from metrix.images import decode_rgb

    picture, _ = decode_rgb(name, data)
    scale = MAX_SIDE / max(picture.size)
    size = (max(8, round(picture.width * scale)), max(8, round(picture.height * scale)))
    return np.asarray(picture.convert("L").resize(size, Image.Resampling.BICUBIC))


class CopyCheck:
    """The NCC of the best alignment of two pictures (NO_MATCH when none is found, or when either
    cannot be read any more); each picture's keypoints are computed once (`cache` pictures kept).
    `read(key)`: the picture's bytes; keys that are ints are gallery ids of `index`, if given."""

    def __init__(self, read=None, index=None, cache: int = 1024):
        import cv2

        self.cv2 = cv2
        self.orb = cv2.ORB_create(FEATURES, fastThreshold=5)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.read, self.index = read, index
        self.features = lru_cache(maxsize=cache)(self._features)

    def _bytes(self, key) -> bytes:
        if self.index is not None and isinstance(key, (int, np.integer)):
            return self.index.source.read(self.index.rows([key])[key][0])
        return self.read(key)

    def _features(self, key, mirrored: bool = False):
        picture = grey(self._bytes(key), str(key))
        if mirrored:
            picture = np.ascontiguousarray(picture[:, ::-1])
        keypoints, descriptors = self.orb.detectAndCompute(picture, None)
        return picture, np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors

    def similarity(self, a, b) -> float:
        """max over B and mirrored B of the NCC after alignment by keypoints, and of the NCC of the
        two frames laid on each other (a picture with few corners, such as flat graphics, may match
        too few keypoints: re-encoded, resized, brightened or mirrored copies still align frame to frame)."""
        best = NO_MATCH
        for mirrored in (False, True):
            try:
                first, second = self.features(a), self.features(b, mirrored)
            except (OSError, ValueError):  # a file gone or no longer an image since indexing
                return NO_MATCH
            best = max(best, self._aligned(first, second), self._framed(first[0], second[0]))
        return best

    def _framed(self, picture_a: np.ndarray, picture_b: np.ndarray) -> float:
        (height_a, width_a), (height_b, width_b) = picture_a.shape, picture_b.shape
        if abs(width_a / height_a - width_b / height_b) > 0.02 * width_b / height_b:
            return NO_MATCH  # other proportions: not the same frame
        scale = np.float32([[width_b / width_a, 0, 0], [0, height_b / height_a, 0]])
        return ncc_after_warp(self.cv2, picture_a, picture_b, scale)

    def _aligned(self, first, second) -> float:
        cv2 = self.cv2
        (picture_a, points_a, descriptors_a), (picture_b, points_b, descriptors_b) = first, second
        if descriptors_a is None or descriptors_b is None or len(points_a) < 2 or len(points_b) < 2:
            return NO_MATCH
        pairs = self.matcher.knnMatch(descriptors_a, descriptors_b, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
        if len(good) < MIN_MATCHES:
            return NO_MATCH
        source = points_a[[m.queryIdx for m in good]]
        target = points_b[[m.trainIdx for m in good]]
        cv2.setRNGSeed(0)  # RANSAC draws from OpenCV's global generator: the same pair, the same answer
        transform, inliers = cv2.estimateAffinePartial2D(
            source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX
        )
        if transform is None or int(inliers.sum()) < MIN_MATCHES:
            return NO_MATCH
        return ncc_after_warp(cv2, picture_a, picture_b, transform)


def ncc_after_warp(cv2, picture_a: np.ndarray, picture_b: np.ndarray, transform: np.ndarray) -> float:
    height, width = picture_b.shape
    warped = cv2.warpAffine(picture_a.astype(np.float32), transform, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(picture_a.shape, np.float32), transform, (width, height), flags=cv2.INTER_NEAREST)
    inside = inside > 0.5
    if inside.sum() < MIN_OVERLAP * min(picture_a.size, picture_b.size):
        return NO_MATCH
    a = cv2.GaussianBlur(warped, (0, 0), 2)[inside]
    b = cv2.GaussianBlur(picture_b.astype(np.float32), (0, 0), 2)[inside]
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else NO_MATCH
