"""The one image decoder (finetune.data.decode) against PIL: EXIF orientation and every pixel format.

Pictures are flat colour blocks made here, so resizing and JPEG differences stay within a few levels
inside the blocks, while a wrong flip, rotation or colour is off by a hundred or more. The EXIF blocks
are written by hand (both byte orders) and checked to be what PIL reads.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from finetune import graphs
from finetune import op_gate
from finetune.export import exporter
from finetune.compat import tf, tf1
from finetune.data import decode, images
from finetune.export import optimize

SIZE = 48
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 50, 220), (240, 230, 40), (30, 220, 230), (220, 40, 210)]


def blocks(height: int, width: int, rows: int = 2, cols: int = 3) -> np.ndarray:
    """uint8 [height, width, 3]: rows x cols flat blocks, each its own colour (none a mirror of another)."""
    picture = np.zeros((height, width, 3), np.uint8)
    for i in range(rows):
        for j in range(cols):
            picture[i * height // rows:(i + 1) * height // rows, j * width // cols:(j + 1) * width // cols] = \
                COLOURS[(i * cols + j) % len(COLOURS)]
    return picture


def encode(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def exif(orientation: int, order: str = "II", kind: int = 3) -> bytes:
    """An APP1 EXIF payload whose IFD0 holds Model then Orientation (``kind`` 3 SHORT or 4 LONG)."""
    e = "<" if order == "II" else ">"
    value = struct.pack(e + "HH", orientation, 0) if kind == 3 else struct.pack(e + "I", orientation)
    entries = [struct.pack(e + "HHI", 0x0110, 2, 4) + b"cam\0", struct.pack(e + "HHI", 0x0112, kind, 1) + value]
    ifd = struct.pack(e + "H", len(entries)) + b"".join(entries) + struct.pack(e + "I", 0)
    return b"Exif\0\0" + order.encode() + struct.pack(e + "HI", 42, 8) + ifd


def jpeg(picture: np.ndarray, app1: bytes | None = None) -> bytes:
    options = {"exif": app1} if app1 is not None else {}
    return encode(Image.fromarray(picture), "JPEG", quality=95, subsampling=0, **options)


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 [H, W, C] (C 1 or 3), written by hand: PIL writes no 16-bit RGB."""
    height, width, channels = values.shape
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def decoder():
    """encoded bytes -> decode_image's [size, size, 3] float pixels, in a tf.compat.v1 session."""
    graph = tf.Graph()
    with graph.as_default():
        encoded = tf1.placeholder(tf.string, [])
        decoded = {size: decode.decode_image(encoded, size) for size in (FORMAT_SIZE, SIZE)}
    with tf1.Session(graph=graph) as sess:
        yield lambda data, size=SIZE: sess.run(decoded[size], {encoded: data})


def reference(data: bytes, size: int = SIZE) -> np.ndarray:
    """What PIL makes of ``data``: exif_transpose, RGB, resized to size x size."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BILINEAR), np.float32)


def flat(picture: np.ndarray, margin: int = 3) -> np.ndarray:
    """Mask of the pixels whose (2 * margin + 1)^2 neighbourhood is one colour: away from block edges."""
    height, width, _ = picture.shape
    padded = np.pad(picture.astype(np.int32), ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    spread = np.zeros((height, width), np.int32)
    for dy in range(2 * margin + 1):
        for dx in range(2 * margin + 1):
            spread = np.maximum(spread, np.abs(padded[dy:dy + height, dx:dx + width] - picture).max(-1))
    return spread <= 2


def assert_blocks_match(got: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    mask = flat(expected)
    assert mask.mean() > 0.3  # most of the picture is compared
    assert np.abs(got - expected)[mask].max() <= tolerance


# ------------------------------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("order", ["II", "MM"])
def test_every_orientation_matches_pil_exif_transpose(decoder, order):
    picture = blocks(40, 64)
    plain = decoder(jpeg(picture))
    seen = []
    for orientation in range(1, 9):
        data = jpeg(picture, exif(orientation, order))
        assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation  # the hand-made EXIF is valid
        got = decoder(data)
        assert_blocks_match(got, reference(data), tolerance=8)
        seen.append(got)
    assert np.abs(seen[0] - plain).max() <= 1  # 1: as if untagged
    for i in range(8):  # and the eight are eight different pictures
        assert all(np.abs(seen[i] - seen[j]).max() > 100 for j in range(i))


def test_orientation_as_long_after_other_segments(decoder):
    """Orientation stored as LONG, and EXIF behind the JFIF segment and a comment: still found."""
    picture = blocks(40, 64)
    data = jpeg(picture, exif(6, "MM", kind=4))
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 300) + b"x" * 300
    moved = data[:2] + comment + data[2:]  # SOI, COM, APP0 JFIF, APP1 EXIF, ...
    assert Image.open(io.BytesIO(moved)).getexif()[0x0112] == 6
    assert_blocks_match(decoder(moved), reference(data), tolerance=8)


def test_missing_invalid_or_malformed_exif_leaves_the_image_as_decoded(decoder):
    picture = blocks(40, 64)
    plain = decoder(jpeg(picture))
    tagged = exif(6)
    broken = {
        "value 9": exif(9),
        "value 0": exif(0),
        "wrong type (ASCII)": exif(6, kind=2),
        "not a TIFF header": tagged[:6] + b"XX" + tagged[8:],
        "IFD offset past the end": tagged[:10] + struct.pack("<I", 0xFFFFFF00) + tagged[14:],
        "cut short inside IFD0": tagged[:20],
        "no IFD0 entries": tagged[:14] + struct.pack("<H", 0) + tagged[16:],
    }
    for name, app1 in broken.items():
        assert np.abs(decoder(jpeg(picture, app1)) - plain).max() <= 1, name
    # a PNG is never turned, whatever its bytes hold
    png = encode(Image.fromarray(picture), "PNG")
    assert_blocks_match(decoder(png), reference(png), tolerance=2)


def test_untagged_images_decode_exactly_as_plain_tensorflow(decoder):
    """Defaults unchanged: without EXIF orientation (or a palette BMP) the pixels are those of
    tf.io.decode_image + bilinear resize, bit for bit."""
    picture = blocks(40, 64)
    encoded = [jpeg(picture), jpeg(picture, exif(1, "MM")), encode(Image.fromarray(picture), "PNG")]
    graph = tf.Graph()
    with graph.as_default():
        data = tf1.placeholder(tf.string, [])
        plain = tf.image.resize(tf.io.decode_image(data, channels=3, expand_animations=False), [SIZE, SIZE])
        with tf1.Session() as sess:
            for item in encoded:
                assert np.array_equal(decoder(item), sess.run(plain, {data: item}))


def test_load_images_turns_a_rotate_90_photo_upright(tmp_path):
    picture = blocks(40, 64)
    tagged, upright = tmp_path / "tagged.jpg", tmp_path / "upright.jpg"
    tagged.write_bytes(jpeg(picture, exif(6)))
    upright.write_bytes(jpeg(np.rot90(picture, k=-1).copy()))  # the same picture saved turned 90 clockwise
    got, expected = images.load_images([tagged, upright], SIZE)
    assert_blocks_match(got, expected, tolerance=8)
    assert np.abs(got - images.load_images([tagged], SIZE)[0]).max() == 0


@pytest.mark.slow  # builds the image_bytes decoder (a map over a traced function), optimises and runs it
def test_image_bytes_graph_applies_orientation_and_passes_the_op_gate(tmp_path):
    picture = blocks(40, 64)
    encoded = [jpeg(picture, exif(o, order)) for o in (1, 3, 6, 8) for order in ("II", "MM")]
    encoded.append(encode(Image.fromarray(blocks(40, 64)).quantize(6), "BMP"))
    graph = tf.Graph()
    with graph.as_default():
        exporter.add_image_bytes_input(lambda pixels: tf.identity(pixels, name="pixels"), SIZE)
    graph_def = tf1.graph_util.extract_sub_graph(graph.as_graph_def(), ["pixels"])
    op_gate.check_ops(graph_def, "the image_bytes graph")  # raises on an op outside finetune.pure_ops
    assert "DecodeRaw" in {op for op, _ in op_gate.graph_ops(graph_def)}
    paths = []
    for i, data in enumerate(encoded):
        paths.append(tmp_path / f"{i}.img")
        paths[-1].write_bytes(data)
    expected = images.load_images(paths, SIZE)
    optimized = optimize.optimize_for_inference(graph_def, ["image_bytes"], ["pixels"])
    for graph_def in (graph_def, optimized):
        got, = graphs.run_graph_def(graph_def, {"image_bytes:0": images.read_image_bytes(paths)}, ["pixels"])
        assert np.abs(got - expected).max() < 1e-3
    for data, got in zip(encoded, expected):
        assert_blocks_match(got, reference(data), tolerance=8)


def test_decodes_inside_tf_data(decoder):
    data = jpeg(blocks(40, 64), exif(8, "MM"))
    graph = tf.Graph()
    with graph.as_default():
        dataset = tf.data.Dataset.from_tensor_slices([data, data]).map(lambda e: decode.decode_image(e, SIZE),
                                                                        num_parallel_calls=2)
        batch = tf1.data.make_one_shot_iterator(dataset.batch(2)).get_next()
        with tf1.Session() as sess:
            got = sess.run(batch)
    assert np.abs(got - decoder(data)).max() == 0


# ---------------------------------------------------------------------------------------------- pixel formats


# 16 x 16 blocks, on JPEG's 8 x 8 (and 16 x 16 subsampled) grid: every JPEG block is flat, so decoders
# agree to rounding; decoded at its own size, so the resize changes nothing.
FORMAT_SIZE = 64
PICTURE = Image.fromarray(blocks(FORMAT_SIZE, FORMAT_SIZE, rows=4, cols=4))
ALPHA = np.tile(np.arange(FORMAT_SIZE, dtype=np.uint8)[None, :, None] * 4, (FORMAT_SIZE, 1, 1))
CMYK_WITH_BLACK = np.asarray(PICTURE.convert("CMYK")) // 2 + np.array([0, 0, 0, 100], np.uint8)
FORMATS = {  # name: (encoded, tolerance); the reference is PIL's convert("RGB")
    "grayscale PNG": (encode(PICTURE.convert("L"), "PNG"), 0),
    "grayscale+alpha PNG": (encode(PICTURE.convert("LA"), "PNG"), 0),
    "RGBA PNG": (encode(Image.fromarray(np.concatenate([np.asarray(PICTURE), ALPHA], -1)), "PNG"), 0),
    "palette PNG": (encode(PICTURE.quantize(6), "PNG"), 0),
    "palette PNG with transparency": (encode(PICTURE.quantize(6), "PNG", transparency=2), 0),
    "RGB JPEG": (encode(PICTURE, "JPEG", quality=90), 4),  # YCbCr rounding, IDCT method
    "grayscale JPEG": (encode(PICTURE.convert("L"), "JPEG", quality=90), 1),
    "CMYK JPEG": (encode(PICTURE.convert("CMYK"), "JPEG", quality=90), 1),
    "CMYK JPEG with black": (encode(Image.fromarray(CMYK_WITH_BLACK, "CMYK"), "JPEG", quality=90), 1),
    "GIF": (encode(PICTURE.quantize(6), "GIF"), 0),
    "BMP": (encode(PICTURE, "BMP"), 0),
    "grayscale BMP (8 bits)": (encode(PICTURE.convert("L"), "BMP"), 0),
    "palette BMP (8 bits)": (encode(PICTURE.quantize(6), "BMP"), 0),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_pixel_format_decodes_like_pil_convert_rgb(decoder, name):
    data, tolerance = FORMATS[name]
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    assert np.abs(decoder(data, FORMAT_SIZE) - expected).max() <= tolerance


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_to_8_bits(decoder, channels):
    rng = np.random.default_rng(channels)
    shape = (FORMAT_SIZE, FORMAT_SIZE, channels)
    values = np.asarray(PICTURE)[..., :channels].astype(np.uint16) * 257 + rng.integers(0, 257, shape)
    got = decoder(png16(values.astype(np.uint16)), FORMAT_SIZE)
    expected = np.broadcast_to(values / 257.0, (FORMAT_SIZE, FORMAT_SIZE, 3))  # gray: the same level in R, G and B
    assert np.abs(got - expected).max() <= 1  # the high byte: within one level of value / 257, never clipped


def test_transparent_gif_pixels_are_black_the_rest_as_pil():
    """TensorFlow's GIF decoder blacks out transparent pixels; PIL's convert("RGB") shows the colour the
    palette stores for the transparent index (arbitrary). Opaque pixels agree."""
    image = PICTURE.quantize(6)
    data = encode(image, "GIF", transparency=2)
    graph = tf.Graph()
    with graph.as_default():
        decoded = decode.decode_image(tf.constant(data), FORMAT_SIZE)
        with tf1.Session() as sess:
            got = sess.run(decoded)
    transparent = np.asarray(image) == 2
    assert transparent.any() and not transparent.all()
    assert np.abs(got[~transparent] - np.asarray(image.convert("RGB"), np.float32)[~transparent]).max() == 0
    assert np.abs(got[transparent]).max() == 0
