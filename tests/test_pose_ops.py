"""Pure pose operations without onnxruntime: letterbox, YOLOX decoding, NMS, the top-down affine and its inverse,
SimCC decoding, the share statistic, tracking, camera motion and compensated keypoint motion."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from stages.pose import ops


def test_letterbox_is_top_left_with_114_padding():
    img = np.full((240, 320, 3), 7, np.uint8)
    out, ratio = ops.letterbox(img, (640, 640))
    assert ratio == 2.0 and out.shape == (640, 640, 3)
    assert (out[:480] == 7).all() and (out[480:] == 114).all()
    wide = np.full((720, 1280, 3), 9, np.uint8)
    out, ratio = ops.letterbox(wide, (640, 640))
    assert ratio == 0.5 and (out[:360] == 9).all() and (out[360:] == 114).all()
    same = np.random.default_rng(0).integers(0, 255, (640, 640, 3), dtype=np.uint8)
    out, ratio = ops.letterbox(same, (640, 640))
    assert ratio == 1.0 and (out == same).all()


@pytest.mark.parametrize("shape", [(240, 320), (720, 1280), (640, 640), (360, 641)])
@pytest.mark.parametrize("bgr", [False, True])
def test_planar_letterbox_and_fused_normalisation_equal_the_reference(shape, bgr):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    ref, ratio = ops.letterbox(img, (640, 640))
    out = np.empty((3, 640, 640), np.float32)
    assert ops.letterbox_planar(img, (640, 640), out, bgr) == ratio
    assert (out == ops.normalise_nchw(ref[None], bgr=bgr)[0]).all()
    crops = rng.integers(0, 255, (3, 384, 288, 3), dtype=np.uint8)
    fused = ops.normalise_into(crops, np.empty((4, 3, 384, 288), np.float32), ops.POSE_MEAN, ops.POSE_STD, bgr)
    assert np.abs(fused - ops.normalise_nchw(crops, ops.POSE_MEAN, ops.POSE_STD, bgr=bgr)).max() < 1e-5


def _reference_nms(boxes, scores, thr):
    """rtmlib's / the DWPose annotator's nms, transcribed."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thr)[0] + 1]
    return keep


@pytest.mark.parametrize("seed", range(10))
def test_nms_matches_the_dwpose_reference(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (40, 2))
    wh = rng.uniform(20, 120, (40, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.permutation(40) / 40.0 + 0.01  # distinct scores: the order is unambiguous
    assert list(ops.nms(boxes, scores, 0.45)) == _reference_nms(boxes, scores, 0.45)


def test_decode_yolox_raw_head_person_only_with_threshold_and_nms():
    out = np.zeros((1, 8400, 85), np.float32)

    def put(anchor, tx, ty, w, h, stride, obj, cls0, cls_other=0.0):
        out[0, anchor, :4] = [tx, ty, math.log(w / stride), math.log(h / stride)]
        out[0, anchor, 4] = obj
        out[0, anchor, 5] = cls0
        out[0, anchor, 6] = cls_other

    a8 = 10 * 80 + 20  # stride 8: grid x 20, y 10
    put(a8, 0.5, 0.5, 40, 100, 8, 0.9, 0.95)  # person, score 0.855
    put(a8 + 1, 0.5, 0.5, 40, 100, 8, 0.9, 0.5)  # the same person shifted 8 px, 0.45: suppressed by NMS
    a16 = 6400 + 5 * 40 + 30  # stride 16: grid x 30, y 5
    put(a16, 0.0, 0.0, 64, 160, 16, 0.9, 0.02, cls_other=0.99)  # a bicycle: not a person
    a32 = 6400 + 1600 + 3 * 20 + 4  # stride 32: grid x 4, y 3
    put(a32, 0.25, 0.75, 96, 200, 32, 0.5, 0.5)  # 0.25: below the threshold
    (boxes, scores), = ops.decode_yolox_raw(out, (640, 640), [2.0], 0.3, 0.45)
    assert scores == pytest.approx([0.855])
    cx, cy = (20 + 0.5) * 8, (10 + 0.5) * 8
    assert boxes[0] == pytest.approx(np.array([cx - 20, cy - 50, cx + 20, cy + 50]) / 2, abs=1e-3)
    (boxes, scores), = ops.decode_yolox_raw(out, (640, 640), [1.0], 0.2, 0.45)
    assert len(boxes) == 2 and scores[1] == pytest.approx(0.25)
    assert boxes[1] == pytest.approx([(4.25 * 32) - 48, (3.75 * 32) - 100, 4.25 * 32 + 48, 3.75 * 32 + 100], abs=1e-3)


def test_decode_yolox_dets_with_labels():
    dets = np.array([[[10, 20, 110, 220, 0.9], [12, 22, 112, 222, 0.8], [300, 40, 400, 240, 0.35],
                      [0, 0, 50, 50, 0.2]]], np.float32)
    labels = np.array([[0, 0, 1, 0]])
    (boxes, scores), = ops.decode_yolox_dets(dets, [0.5], 0.3, 0.45, labels)
    assert scores == pytest.approx([0.9]) and boxes[0] == pytest.approx([20, 40, 220, 440])
    (boxes, scores), = ops.decode_yolox_dets(dets, [1.0], 0.3, 0.45)
    assert scores == pytest.approx([0.9, 0.35])


def _rtmlib_warp(center, scale, output_size):
    """rtmlib/mmpose get_warp_matrix(rot=0), transcribed: three point pairs through cv2.getAffineTransform."""
    src_w = scale[0]
    dst_w, dst_h = output_size
    src_dir = np.array([0.0, src_w * -0.5])
    dst_dir = np.array([0.0, dst_w * -0.5])
    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + src_dir
    src[2] = src[1] + np.array([-(src[0] - src[1])[1], (src[0] - src[1])[0]])
    src[2] = src[1] + np.r_[-(src[0] - src[1])[1], (src[0] - src[1])[0]]
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    dst[2] = dst[1] + np.r_[-(dst[0] - dst[1])[1], (dst[0] - dst[1])[0]]
    return cv2.getAffineTransform(src, dst)


@pytest.mark.parametrize("box", [[100, 50, 200, 400], [10, 10, 300, 90], [0.5, 3.25, 77.75, 101.5]])
def test_crop_affine_matches_rtmlib_and_inverts_exactly(box):
    size = (384, 288)
    center, scale = ops.box_center_scale(np.array([box], np.float64), size)
    w, h = (box[2] - box[0]) * 1.25, (box[3] - box[1]) * 1.25
    assert scale[0] == pytest.approx([w, w / 0.75] if w > h * 0.75 else [h * 0.75, h])  # widened to 3:4
    m = ops.crop_matrix(center[0], scale[0], size)
    assert m == pytest.approx(_rtmlib_warp(center[0], scale[0], (288, 384)), abs=1e-3)
    pts = np.random.default_rng(0).uniform(-50, 400, (1, 133, 2))
    crop_pts = pts[0] @ m[:, :2].T + m[:, 2]
    back = ops.input_to_image(crop_pts[None].astype(np.float32), center, scale, size)
    assert back[0] == pytest.approx(pts[0], abs=1e-3)


def test_warp_crop_moves_a_pixel_where_the_matrix_says():
    img = np.zeros((480, 640, 3), np.uint8)
    img[203, 215] = 255
    center, scale = np.array([200.0, 250.0]), np.array([288.0, 384.0])  # a 1:1 crop
    crop = ops.warp_crop(img, center, scale, (384, 288))
    ys, xs = np.nonzero(crop[..., 0])
    assert (xs.tolist(), ys.tolist()) == ([215 - 200 + 144], [203 - 250 + 192])


def test_decode_simcc_min_and_mean_scores_and_invisible_points():
    sx = np.zeros((1, 3, 576), np.float32)
    sy = np.zeros((1, 3, 768), np.float32)
    sx[0, 0, 101], sy[0, 0, 300] = 0.8, 0.6
    sx[0, 1, 0], sy[0, 1, 767] = 0.9, 0.9
    sx[0, 2] -= 1.0
    sy[0, 2] -= 1.0
    locs, scores = ops.decode_simcc(sx, sy, 2.0, "min")
    assert locs[0, 0].tolist() == [50.5, 150.0] and scores[0, 0] == pytest.approx(0.6)
    assert locs[0, 1].tolist() == [0.0, 383.5]
    assert locs[0, 2].tolist() == [-0.5, -0.5] and scores[0, 2] < 0
    _, mean = ops.decode_simcc(sx, sy, 2.0, "mean")
    assert mean[0, 0] == pytest.approx(0.7)


def test_value_on_share():
    v = [17, 17, 17, 5, 17, 17, 17, 17, 17, 17]
    assert ops.value_on_share(v, 0.9) == 17 and ops.value_on_share(v, 1.0) == 5
    assert ops.value_on_share([1, 1, 2, 1, 1, 3, 1, 1, 1, 1], 0.8, high=False) == 1
    assert ops.value_on_share([1, 1, 2, 1, 1, 3, 1, 1, 1, 1], 1.0, high=False) == 3
    assert ops.value_on_share([], 0.9) == 0.0


def _frames(boxes_per_frame):
    return [ops.FramePersons(np.array(b, np.float32).reshape(-1, 4), np.full(len(b), 0.9, np.float32))
            for b in boxes_per_frame]


def test_tracker_keeps_ids_ranks_by_prominence_and_follows_fast_small_people():
    frames = []
    for t in range(8):
        big = [200, 50, 300, 350]
        small = [10 + 30 * t, 300, 40 + 30 * t, 340]  # moves its own width every frame: no overlap
        frames.append([small, big] if t % 2 else [big, small])
    frames[4] = [frames[4][0]]  # the small one missed for a frame
    fp = _frames(frames)
    assert ops.track_persons(fp, 640 * 480) == 2
    for f in fp:
        main = ops.person_of(f, 0)
        assert f.boxes[main].tolist() == [200, 50, 300, 350]
        assert len(f) == 1 or ops.person_of(f, 1) is not None


def test_tracker_starts_a_new_track_for_a_far_jump():
    fp = _frames([[[0, 0, 50, 100]], [[0, 0, 50, 100]], [[400, 300, 450, 400]]])
    assert ops.track_persons(fp, 640 * 480) == 2


def _texture(seed=0, shape=(480, 640)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (shape[0] // 6, shape[1] // 6), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, shape[::-1], interpolation=cv2.INTER_NEAREST), (3, 3), 0)


@pytest.mark.parametrize("dx, dy, angle, zoom", [(7, -3, 0, 1.0), (-12, 5, 2, 1.03), (0, 0, 0, 1.0)])
def test_background_affine_recovers_the_camera_and_ignores_the_person(dx, dy, angle, zoom):
    base = _texture()
    truth = cv2.getRotationMatrix2D((320, 240), angle, zoom)
    truth[:, 2] += [dx, dy]
    moved = cv2.warpAffine(base, truth, (640, 480), borderMode=cv2.BORDER_REFLECT)
    person = np.array([250, 100, 390, 420])
    # the person moves on their own: paste a patch moving against the camera
    patch = _texture(1)[100:420, 250:390]
    prev, cur = base.copy(), moved.copy()
    prev[100:420, 250:390] = patch
    cur[100:420, 230:370] = patch
    est = ops.background_affine(prev[20:460, 20:620], cur[20:460, 20:620], person[None] - 20,
                                (person - [20, 0, 20, 0])[None] - 20)
    assert est is not None
    pts = np.array([[100.0, 100.0], [500.0, 400.0], [320.0, 240.0]])
    expect = (pts + 20) @ truth[:, :2].T + truth[:, 2] - 20
    assert ops.apply_affine(est, pts) == pytest.approx(expect, abs=0.6)


def test_background_affine_gives_up_on_a_plain_wall():
    wall = np.full((240, 320), 128, np.uint8)
    assert ops.background_affine(wall, wall, np.zeros((0, 4)), np.zeros((0, 4))) is None


def test_step_motion_is_zero_after_compensation_and_scaled_by_size_and_time():
    k = np.random.default_rng(0).uniform(100, 300, (1, 17, 2)).astype(np.float32)
    box = np.array([[100, 100, 300, 300]], np.float32)
    s = np.full((1, 17), 0.9, np.float32)
    a = ops.FramePersons(box, np.ones(1), k, s, np.array([0]))
    shifted = ops.FramePersons(box + [10, 0, 10, 0], np.ones(1), k + [10, 0], s, np.array([0]))
    pan = np.array([[1.0, 0, 10], [0, 1, 0]])
    assert ops.step_motion(a, shifted, 0, pan, 0.2, 0.5) == pytest.approx(0, abs=1e-6)
    diag = math.hypot(200, 200)
    assert ops.step_motion(a, shifted, 0, None, 0.2, 0.5) == pytest.approx(10 / diag / 0.2)
    assert ops.step_motion(a, shifted, 1, None, 0.2, 0.5) is None  # no such track


def test_cumulative_affines_map_every_frame_to_the_first():
    steps = [np.array([[1.0, 0, 5], [0, 1, -2]]), None, np.array([[1.0, 0, 3], [0, 1, 0]])]
    cum = ops.cumulative_affines(steps)
    assert len(cum) == 4
    assert (cum[3] @ [100, 100, 1])[:2] == pytest.approx([92, 102])
