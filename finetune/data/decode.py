"""The one image decoder: encoded bytes -> float RGB pixels, the same in training, export and predict.

:func:`decode_image` is the only place bytes become pixels: the training input pipeline (a tf.data map),
the exported ``image_bytes`` graph input (:func:`finetune.data.images.decode_image_batch`) and
:func:`finetune.data.images.load_images` (export parity, ``predict``) all call it, so a model sees the
same pixels everywhere. A second decoder (PIL in ``predict``, say) would feed a deployed model pixels it
was not trained on.

What it does, in TensorFlow ops only (the ``image_bytes`` graph must pass the op gate,
:mod:`finetune.pure_ops`: no Python callbacks), and without control flow:

- ``tf.io.decode_image(channels=3)`` reads JPEG (CMYK ones too), PNG, GIF and BMP. Grayscale, gray+alpha,
  RGBA and palette images come out RGB as PIL's ``convert("RGB")`` gives them (alpha dropped, not
  composited); 16-bit PNGs are scaled to 8 bits (the high byte: within one level of value/257).
  Transparent GIF pixels come out black, where PIL gives the palette's colour for the transparent index.
- 8-bit BMPs: TensorFlow returns their palette indices as gray levels; we look the colours up in the
  file's palette (a grayscale palette maps to itself).
- A bilinear resize to the square ``image_size`` x ``image_size`` (aspect ratio not kept).
- EXIF orientation (JPEG tag 0x0112, both byte orders) is applied after the resize, as PIL's
  ``ImageOps.exif_transpose`` would before it: flips and transposes commute with resizing to a square, and
  on a square all eight variants have one shape, so a transpose and a reverse whose permutation and axes
  are computed tensors do it without branching. Without a valid tag (not a JPEG, no EXIF, a value outside
  1..8, malformed EXIF) the image is left as decoded; bad EXIF never fails a decode.

The EXIF and BMP headers are read from the file's first :data:`HEAD_BYTES` bytes with ``tf.io.decode_raw``
(``DecodeRaw``: bytes reinterpreted as numbers, on the op gate's list); every byte index is clipped into
range, so a malformed header reads garbage and is rejected, never raises. Cost: about 0.3 ms an image
over the plain decode on one core, measured on 500x375 JPEGs (~1 ms to decode); lost in a photo's decode.
"""
from __future__ import annotations

import weakref

from finetune.compat import tf, tf1

# Comparisons are spelled tf.equal / tf.not_equal: under tf.compat.v1 graph mode ``==`` on tensors
# compares the Python objects, not the values.

HEAD_BYTES = 1 << 17  # the bytes read for EXIF and a BMP palette: room for a 64 KiB APP segment before EXIF
JPEG_SEGMENTS = 8  # segments walked before giving up on EXIF (it is the first or second in practice)
IFD_ENTRIES = 64  # IFD0 entries searched for Orientation (sorted by tag, 0x0112 comes early)
ORIENTATION_TAG = 0x0112
EXIF_HEADER = b"Exif\0\0"  # how an APP1 segment holding EXIF begins
_PADDING = b"\0" * 16  # so an empty or tiny file still has bytes to (mis)read


# Plain TensorFlow ops, no Python control flow on tensors: nothing for AutoGraph to convert, and converting
# the unrolled EXIF walk call by call made every tf.data map that decodes take about 0.4 s longer to trace.
@tf.autograph.experimental.do_not_convert
def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes (scalar string) -> float32 RGB [image_size, image_size, 3] in [0, 255], upright."""
    head, length = _head(encoded)
    pixels = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    pixels = _bmp_palette_colours(pixels, head)
    image = tf.image.resize(pixels, [image_size, image_size], method="bilinear")
    image.set_shape([image_size, image_size, 3])
    return orient(image, exif_orientation(head, length))


# Per graph, per image size: decode_image traced once as a function (see shared_decode_image).
_SHARED: "weakref.WeakKeyDictionary[tf.Graph, dict[int, tf.types.experimental.GenericFunction]]" = (
    weakref.WeakKeyDictionary())


def shared_decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """:func:`decode_image` for a tf.data map: one function per graph (and image size) that every map of the
    graph calls, so that its thousand ops are traced once rather than once per map (a run's graph decodes in
    four: training, validation, test and the feature cache's extractor; about 0.2 s a trace). The same ops,
    so the same pixels; the function goes with its graph."""
    graph = tf1.get_default_graph()
    while getattr(graph, "outer_graph", None) is not None:  # a map's function graph: share across the maps
        graph = graph.outer_graph
    functions = _SHARED.setdefault(graph, {})
    if image_size not in functions:
        functions[image_size] = tf.function(lambda data: decode_image(data, image_size), autograph=False,
                                            input_signature=[tf.TensorSpec([], tf.string)])
    return functions[image_size](encoded)


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """A square [S, S, C] image turned upright for EXIF ``orientation`` (scalar int, 1..8; others: unchanged).

    2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise: a transpose (5-8), then the flips that remain.
    """
    # A transpose and a reverse whose permutation and axes are tensors: for 1 (most images) both hand
    # their input through uncopied. (tf.where among eight turned copies, or one index gather, cost more.)
    o = tf.cast(orientation, tf.int32)
    transpose = tf.cast((o >= 5) & (o <= 8), tf.int32)
    turned = tf.transpose(image, tf.stack([transpose, 1 - transpose, 2]))
    flips = tf.stack([tf.reduce_any(tf.equal(o, [3, 4, 7, 8])), tf.reduce_any(tf.equal(o, [2, 3, 6, 7]))])
    turned = tf.reverse(turned, tf.reshape(tf.where(flips), [-1]))  # axis 0: top-bottom, 1: left-right
    turned.set_shape(image.shape)
    return turned


def _head(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first HEAD_BYTES bytes as uint8 [n] (zero-padded a little), and how many of them are the file's."""
    head = tf.strings.substr(encoded, 0, HEAD_BYTES)
    length = tf.cast(tf.strings.length(head), tf.int64)
    return tf.io.decode_raw(tf.strings.join([head, _PADDING]), tf.uint8), length


class _Bytes:
    """Reads unsigned integers at any int64 offsets of a uint8 vector; out-of-range offsets are clipped."""

    def __init__(self, data: tf.Tensor) -> None:
        self.data = data
        self.last = tf.cast(tf.size(data), tf.int64) - 1

    def u8(self, offset: tf.Tensor) -> tf.Tensor:
        offset = tf.clip_by_value(tf.cast(offset, tf.int64), 0, self.last)
        return tf.cast(tf.gather(self.data, offset), tf.int64)

    def uint(self, offset: tf.Tensor, size: int, little_endian: bool | tf.Tensor) -> tf.Tensor:
        """The ``size``-byte unsigned integer at ``offset`` (any shape), in the byte order asked for."""
        return _number(self.u8(tf.expand_dims(tf.cast(offset, tf.int64), -1) + tf.range(size, dtype=tf.int64)),
                       little_endian)

    def equals(self, offset: tf.Tensor, expected: bytes) -> tf.Tensor:
        """Whether the bytes at ``offset`` (scalar) are ``expected``."""
        found = self.u8(offset + tf.range(len(expected), dtype=tf.int64))
        return tf.reduce_all(tf.equal(found, tf.constant(list(expected), tf.int64)))


def _number(found: tf.Tensor, little_endian: bool | tf.Tensor) -> tf.Tensor:
    """int64 bytes [..., n] -> the unsigned integers they spell, in the byte order asked for (a Python bool,
    or a scalar bool tensor when the file says which)."""
    weights = [256 ** i for i in range(found.shape[-1])]
    little = tf.reduce_sum(found * weights, -1)
    big = tf.reduce_sum(found * weights[::-1], -1)
    if isinstance(little_endian, bool):
        return little if little_endian else big
    return tf.where(little_endian, little, big)


def exif_orientation(head: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """The JPEG's EXIF Orientation (int32 scalar, 1..8), or 1 when there is none or it is not valid.

    ``head``: the file's first bytes as uint8 (see :func:`_head`), of which ``length`` are real.
    Walks the JPEG's first segments to the APP1 ``Exif\\0\\0`` one, then reads the TIFF header and IFD0.
    """
    data = _Bytes(head)
    tiff = tf.constant(-1, tf.int64)  # where the TIFF header starts; -1 until found
    walking = data.equals(0, b"\xff\xd8")  # SOI
    position = tf.constant(2, tf.int64)
    for _ in range(JPEG_SEGMENTS):
        window = data.u8(position + tf.range(10, dtype=tf.int64))  # 0xFF, marker, length (2), "Exif\0\0"?
        marker = window[1]
        segment_length = window[2] * 256 + window[3]
        is_segment = (tf.equal(window[0], 0xFF) & (marker >= 0xC0) & tf.not_equal(marker, 0xD9)
                      & tf.not_equal(marker, 0xDA) & (segment_length >= 2))  # an SOS or EOI ends the header
        is_exif = (walking & is_segment & tf.equal(marker, 0xE1)
                   & tf.reduce_all(tf.equal(window[4:], list(EXIF_HEADER))))
        tiff = tf.where(is_exif, position + 10, tiff)
        walking = walking & is_segment & ~is_exif
        position += 2 + segment_length
    little = data.equals(tiff, b"II")
    valid = (tiff >= 0) & (little | data.equals(tiff, b"MM")) & tf.equal(data.uint(tiff + 2, 2, little), 42)
    ifd = tiff + data.uint(tiff + 4, 4, little)
    count = data.uint(ifd, 2, little)
    index = tf.range(IFD_ENTRIES, dtype=tf.int64)
    entry = ifd + 2 + 12 * index
    fields = data.u8(entry[:, None] + tf.range(12, dtype=tf.int64))  # tag, type, count, value
    kind = _number(fields[:, 2:4], little)  # 3 SHORT, 4 LONG
    value = tf.where(tf.equal(kind, 3), _number(fields[:, 8:10], little), _number(fields[:, 8:12], little))
    match = ((index < count) & (entry + 12 <= length) & tf.equal(_number(fields[:, :2], little), ORIENTATION_TAG)
             & (tf.equal(kind, 3) | tf.equal(kind, 4)) & tf.equal(_number(fields[:, 4:8], little), 1))
    value = tf.gather(value, tf.argmax(tf.cast(match, tf.int32), output_type=tf.int64))
    valid = valid & tf.reduce_any(match) & (value >= 1) & (value <= 8)
    return tf.where(valid, tf.cast(value, tf.int32), 1)


def _bmp_palette_colours(pixels: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """``pixels`` with an 8-bit BMP's palette indices (TensorFlow's gray levels) replaced by their colours.

    Without control flow or a lookup on every image: a palette BMP's rows go through the palette, the
    rows of anything else past it (one of the two slices is empty); the concat costs one copy.
    """
    data = _Bytes(head)
    header_size = data.uint(14, 4, True)
    palette_bmp = (data.equals(0, b"BM") & (header_size >= 40) & tf.equal(data.uint(28, 2, True), 8)
                   & tf.equal(data.uint(30, 4, True), 0))  # BITMAPINFOHEADER or later, 8 bits, uncompressed
    colours = data.uint(46, 4, True)
    colours = tf.where((colours >= 1) & (colours <= 256), colours, 256)
    entry = tf.range(256, dtype=tf.int64)
    palette = data.u8(14 + header_size + 4 * entry[:, None] + [2, 1, 0])  # stored B, G, R, reserved
    palette = tf.cast(tf.where(entry[:, None] < colours, palette, 0), tf.uint8)
    rows = tf.where(palette_bmp, tf.shape(pixels)[0], 0)
    looked_up = tf.gather(palette, tf.cast(pixels[:rows, :, 0], tf.int32))
    return tf.concat([looked_up, pixels[rows:]], axis=0)
