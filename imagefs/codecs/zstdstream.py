"""zstd decoders that write into the caller's buffers (the index pass, spans).

python-zstandard's and pyzstd's decoders hand back every output as a new
bytes object: libzstd writes into a buffer of the binding's, which then
allocates and copies.  Over the bench's 1.9 GB image (``zstd -T0 -3``, in
memory, five rounds alternating) python-zstandard's decompressobj with 4 MiB
output chunks took 1.04 s, libzstd writing straight into a reused buffer
0.87 s, ``zstd -dc > /dev/null`` 1.09 s: the copy was the gap to the tool.

:func:`block_decoder` goes one copy further.  libzstd's streaming API
(``ZSTD_decompressStream``) decodes into a window buffer of its own and then
copies out; its *buffer-less* API decodes straight into the caller's memory
and reads its matches from there, so the pass's output segments are the
window.  Decoding the bench image into three 4 MiB segments in rotation
took 0.93 s that way against ~1.1 s through the streaming API (a bare loop,
2026-12-03); the whole pass gained nothing measurable from it
(bench/RESULTS.md, eighth session), and keeps it for the simpler pass and
the memory.  The price is the rule that comes with it: libzstd remembers
only the region it wrote last before the current one, so every block must
go into the current segment right after the previous block or at the start
of a new segment, and the segment before must hold a whole window and stay
untouched (:class:`~imagefs.codecs.zstdoutput.OutputSegments` keeps it).

The frame header goes through the buffer-less ``ZSTD_decompressContinue``;
each block then through the block API: ``ZSTD_decompressBlock``, one
foreign call per compressed block, where the buffer-less stage machine
takes two (the block's header, then its body).  Raw and RLE blocks are
copied or filled here and announced with ``ZSTD_insertBlock``, as that API
requires.  Every foreign call gives up the GIL and waits to take it back
(see :class:`StreamDecoder`): halving them made the pass 3-5 % faster
(bench/RESULTS.md, 2026-12-07, twenty-third session).  The block API keeps
no frame state: the pass walks the block headers itself, knows the frame's
last block from them, checks the block size limit and takes the content
checksum with its hasher.

The functions are called through ctypes on the system's ``libzstd.so.1``
(the library the ``zstd`` tool uses, which exports the buffer-less and
block APIs since 1.0), with python-zstandard, copying, as the fallback
where that library cannot be loaded.  ctypes releases the GIL for the call.

:class:`StreamDecoder` is ``ZSTD_decompressStream`` by address, for decoding
spans a piece per call rather than a block per call (its docstring says
why), the head of a stream before it is indexed, and the pass's resume
trials (:mod:`~imagefs.codecs.zstdtrial`).

:func:`compress_frame` compresses the pass's window snapshots through the
same library, so that an unindexed image's first reads and its index pass
need no zstd binding at all (pyzstd's import, with typing_extensions and
inspect, took 5-10 ms of a mount's first read of a zstd image).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Protocol

from imagefs.codecs.zstdframe import BLOCK_MAX
from imagefs.io.scatter import buffer_address

#: libzstd's ZSTD_d_windowLogMax parameter (zstd.h, ZSTD_dParameter).
_WINDOW_LOG_MAX = 100
#: ZSTD_DCtx_reset's ZSTD_reset_session_only (zstd.h, ZSTD_ResetDirective):
#: a new frame, the parameters (the window limit) kept.
_RESET_SESSION_ONLY = 1


class ZstdStreamError(Exception):
    """libzstd refused the data (its own message)."""


class _Buffer(ctypes.Structure):
    # ZSTD_inBuffer and ZSTD_outBuffer: {const void* src/dst; size_t size; size_t pos}
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


def _load() -> Any:
    try:
        lib = ctypes.CDLL("libzstd.so.1")
        _declare(lib)
    except (OSError, AttributeError):       # none, or older than 1.4 (no DCtx parameters)
        return None
    return lib


_P, _SIZE, _INT = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
_BUF = ctypes.POINTER(_Buffer)

#: The decoding functions used here: name -> (result type, argument types).
_DECODING: dict[str, tuple[Any, list[Any]]] = {
    "ZSTD_createDCtx": (_P, []),
    "ZSTD_freeDCtx": (_SIZE, [_P]),
    "ZSTD_DCtx_setParameter": (_SIZE, [_P, _INT, _INT]),
    "ZSTD_decompressStream": (_SIZE, [_P, _BUF, _BUF]),
    "ZSTD_DCtx_reset": (_SIZE, [_P, _INT]),
    "ZSTD_DCtx_refPrefix": (_SIZE, [_P, _P, _SIZE]),
    "ZSTD_getErrorName": (ctypes.c_char_p, [_SIZE]),
    "ZSTD_decompressBegin": (_SIZE, [_P]),
    "ZSTD_nextSrcSizeToDecompress": (_SIZE, [_P]),
    "ZSTD_decompressBlock": (_SIZE, [_P, _P, _SIZE, _P, _SIZE]),
    "ZSTD_insertBlock": (_SIZE, [_P, _P, _SIZE]),
    "ZSTD_decompressContinue": (_SIZE, [_P, _P, _SIZE, _P, _SIZE]),
}
#: The compression functions (the window snapshots): declared on first use.
_COMPRESSION: dict[str, tuple[Any, list[Any]]] = {
    "ZSTD_createCCtx": (_P, []),
    "ZSTD_freeCCtx": (_SIZE, [_P]),
    "ZSTD_compressBound": (_SIZE, [_SIZE]),
    "ZSTD_compressCCtx": (_SIZE, [_P, _P, _SIZE, _P, _SIZE, _INT]),
}


def _declare(lib: Any, functions: dict[str, tuple[Any, list[Any]]] = _DECODING) -> None:
    """Set the types of ``functions`` on ``lib`` (AttributeError for one it lacks)."""
    for name, (restype, argtypes) in functions.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


_lib: Any = None
_loaded = False
_load_lock = threading.Lock()


def _libzstd() -> Any:
    """The system's libzstd, loaded once (None where there is none)."""
    global _lib, _loaded
    if not _loaded:
        # Two index passes may start at once (BUILD_SLOTS): one loads, the
        # other waits, so argtypes are never set on a library in use.
        with _load_lock:
            if not _loaded:
                _lib, _loaded = _load(), True
    return _lib


def available() -> bool:
    """Whether the system libzstd (the buffer-less decoders) can be used."""
    return _libzstd() is not None


def system_version() -> str | None:
    """The system libzstd's version (the index pass's decoder), None where
    it cannot be loaded."""
    lib = _libzstd()
    if lib is None:
        return None
    lib.ZSTD_versionString.restype = ctypes.c_char_p
    lib.ZSTD_versionString.argtypes = []
    return str(lib.ZSTD_versionString().decode())


def _address(view: memoryview) -> tuple[int, Any]:
    """The address of a non-empty writable ``view``, and what keeps it valid."""
    anchor = ctypes.c_char.from_buffer(view)
    return ctypes.addressof(anchor), anchor


class _Context:
    """A libzstd context, freed with its owner (a decompression context;
    subclasses may name other create and free functions)."""

    _CREATE, _FREE, _KIND = "ZSTD_createDCtx", "ZSTD_freeDCtx", "a decoder"

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._ctx = getattr(lib, self._CREATE)()
        if not self._ctx:
            raise MemoryError(f"libzstd could not allocate {self._KIND}")

    def _fail(self, code: int) -> ZstdStreamError:
        """The error for libzstd's result ``code`` (its own message)."""
        return ZstdStreamError(self._lib.ZSTD_getErrorName(code).decode())

    def _check(self, code: int) -> int:
        """``code``, raised as an error if it is one (the hot paths compare inline)."""
        if code >= _FIRST_ERROR:
            raise self._fail(code)
        return code

    def close(self) -> None:
        if self._ctx:
            getattr(self._lib, self._FREE)(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()


class StreamDecoder(_Context):
    """``ZSTD_decompressStream`` over memory the caller holds, by address:
    one foreign call decodes every block its input and output allow.

    For decoding spans (:mod:`~imagefs.codecs.zstdspan`), where a call per
    block (the buffer-less API) meant a release and a re-acquisition of
    the GIL per 128 KiB: each re-acquisition waits for whatever Python
    another thread is running, so a prefetch lane beside busy FUSE threads
    ran at a fraction of its speed (see zstdspan).  libzstd decodes into a
    window buffer of its own here and copies each block out (~4 % of the
    span's decoding time, hot in the cache).

    The caller sets the input and output regions (:meth:`set_input`,
    :meth:`set_output`) and calls :meth:`step`; ``in_pos`` and ``out_pos``
    say how far each got.
    """

    def __init__(self, lib: Any, window_log_max: int) -> None:
        super().__init__(lib)
        self._decompress = lib.ZSTD_decompressStream
        self._in = _Buffer()
        self._out = _Buffer()
        self._in_ref = ctypes.byref(self._in)
        self._out_ref = ctypes.byref(self._out)
        self._prefix: bytes | None = None
        self._check(lib.ZSTD_DCtx_setParameter(self._ctx, _WINDOW_LOG_MAX, window_log_max))

    def begin(self, head: bytes, prefix: bytes | None = None) -> None:
        """Start a frame: ``head`` the bytes of its header (or none: they come
        as input), ``prefix`` the history before its first block (a window
        snapshot, raw content), referenced until the next begin, not copied."""
        self._check(self._lib.ZSTD_DCtx_reset(self._ctx, _RESET_SESSION_ONLY))
        self._prefix = prefix
        if prefix:
            self._check(self._lib.ZSTD_DCtx_refPrefix(self._ctx, prefix, len(prefix)))
        if head:
            held = bytearray(head)
            self.set_input(buffer_address(memoryview(held)), len(held))
            self.set_output(0, 0)
            self.step()
            if self.in_pos != len(held):
                raise ZstdStreamError("libzstd did not take the frame header")
            self.set_input(0, 0)

    def set_input(self, address: int, size: int) -> None:
        """Decode from the ``size`` bytes at ``address`` (kept alive by the caller)."""
        self._in.ptr, self._in.size, self._in.pos = address or None, size, 0

    def set_output(self, address: int, size: int) -> None:
        """Write into the ``size`` bytes at ``address`` (kept alive by the caller)."""
        self._out.ptr, self._out.size, self._out.pos = address or None, size, 0

    @property
    def in_pos(self) -> int:
        """Input bytes consumed since :meth:`set_input`."""
        return int(self._in.pos)

    @property
    def in_left(self) -> int:
        """Input bytes not yet consumed."""
        return int(self._in.size - self._in.pos)

    @property
    def out_pos(self) -> int:
        """Output bytes written since :meth:`set_output`."""
        return int(self._out.pos)

    def step(self) -> bool:
        """Decode what the input and output allow; True once the frame has
        ended (its checksum checked, if it has one) and is fully flushed."""
        return self._check(self._decompress(self._ctx, self._out_ref, self._in_ref)) == 0


def stream_decoder(window: int) -> StreamDecoder | None:
    """A :class:`StreamDecoder` for frames with windows up to ``window`` bytes,
    None without the system libzstd."""
    lib = _libzstd()
    if lib is None:
        return None
    # libzstd's default limit is 2^27; a larger window must be allowed by name.
    return StreamDecoder(lib, max(27, (window - 1).bit_length()))


class BlockDecoder(Protocol):
    """One zstd frame at a time, decoded block by block into the caller's buffers."""

    def begin(self, head: memoryview) -> None:
        """Start a frame with its header (magic included)."""

    def decode_block(self, block: memoryview, out: memoryview) -> int:
        """Decode one whole block (its 3-byte header included) into the start
        of ``out`` (at least BLOCK_MAX bytes): the bytes written.

        ``out`` must start right after the previous block's output or at the
        start of a buffer not written since, and the previous block's buffer
        must hold the window before it, untouched, until this frame ends or
        a block is written into a third buffer (the buffer-less API's rule).
        """

    def decode_at(self, src: int, btype: int, bsize: int, dst: int, room: int) -> int:
        """:meth:`decode_block` by address: the block whose header is at
        ``src`` (its type and size field, read from that header by the
        caller) into the ``room`` bytes at ``dst``, under the same rule."""

    #: Whether :meth:`end` checks the frame's content checksum itself
    #: (False: the caller must take the XXH64 of the output and compare).
    checks_content: bool

    def end(self, checksum: memoryview) -> bool:
        """Give the frame's 4-byte content checksum (empty where it has none):
        whether the frame is now complete.  A wrong checksum raises if
        ``checks_content``."""

    def close(self) -> None:
        """Free the decoder's memory."""


#: libzstd's error codes are the largest size_t values (``ZSTD_isError``:
#: above ``(size_t)-ZSTD_error_maxCode``; maxCode is 120 in 1.5): comparing
#: in Python saves one foreign call per block.
_FIRST_ERROR = (1 << 8 * ctypes.sizeof(ctypes.c_size_t)) - 1000


#: zstd's block types (RFC 8878, 3.1.1.2.2).
RAW_BLOCK, RLE_BLOCK, COMPRESSED_BLOCK = 0, 1, 2


class _LibzstdBlockDecoder(_Context):
    """libzstd's buffer-less and block APIs through ctypes (module docstring).

    The content checksum is the caller's: the block API never sees it, and
    the pass's hasher thread reads every byte anyway (libzstd's own check
    was about a sixth of the pass's time in its thread).
    """

    checks_content = False

    def __init__(self, lib: Any) -> None:
        super().__init__(lib)
        self._continue = lib.ZSTD_decompressContinue
        self._decompress_block = lib.ZSTD_decompressBlock
        self._insert_block = lib.ZSTD_insertBlock

    def begin(self, head: memoryview) -> None:
        self._check(self._lib.ZSTD_decompressBegin(self._ctx))
        # The header in the pieces libzstd asks for (its magic, then the rest):
        # the only input that goes through the buffer-less stage machine.
        src, keep = _address(_writable(head))
        used = 0
        while used < len(head):
            step = self._lib.ZSTD_nextSrcSizeToDecompress(self._ctx)
            if step == 0 or step > len(head) - used:
                raise ZstdStreamError("the frame's structure differs from its headers")
            self._check(self._continue(self._ctx, 0, 0, src + used, step))
            used += step
        del keep

    def decode_block(self, block: memoryview, out: memoryview) -> int:
        header = block[0] | block[1] << 8 | block[2] << 16
        dst, keep_out = _address(out)
        src, keep_in = _address(_writable(block))
        got = self.decode_at(src, (header >> 1) & 3, header >> 3, dst, len(out))
        del keep_in, keep_out
        return got

    def decode_at(self, src: int, btype: int, bsize: int, dst: int, room: int) -> int:
        if btype == COMPRESSED_BLOCK:
            got = self._decompress_block(self._ctx, dst, room, src + 3, bsize)
            if got >= _FIRST_ERROR:
                raise self._fail(got)
            return int(got)
        if bsize > room:
            raise ZstdStreamError("a block larger than its output buffer")
        if btype == RAW_BLOCK:
            ctypes.memmove(dst, src + 3, bsize)
        elif btype == RLE_BLOCK:
            ctypes.memset(dst, ctypes.c_ubyte.from_address(src + 3).value, bsize)
        else:
            raise ZstdStreamError("a reserved block type")
        # The block API decodes compressed blocks only; the others must be
        # announced, or the next block's matches miss their history.
        self._insert_block(self._ctx, dst, bsize)
        return bsize

    def end(self, checksum: memoryview) -> bool:
        # The block API keeps no frame state: the caller knows the last
        # block from its header and checks the content checksum itself.
        return True


def _writable(data: memoryview) -> memoryview:
    """``data``, or a writable copy of it (ctypes takes addresses of writable buffers only)."""
    return memoryview(bytearray(data)) if data.readonly and len(data) else data


class _CopyingBlockDecoder:
    """python-zstandard's decompressobj, a block at a time, copied out (the fallback)."""

    checks_content = True

    def __init__(self, max_window: int) -> None:
        # Imported here: only this fallback needs it, and a mount's first
        # read of a zstd image would otherwise load it (3 ms, measured).
        import zstandard
        self._error = zstandard.ZstdError
        self._maker = zstandard.ZstdDecompressor(max_window_size=max_window)
        self._dec: Any = None

    def begin(self, head: memoryview) -> None:
        # One block's output at most per call: the whole of it comes back
        # from the one decompress() call that completes the block.
        self._dec = self._maker.decompressobj(write_size=BLOCK_MAX)
        self._decompress(head)

    def _decompress(self, data: memoryview) -> bytes:
        if self._dec.eof:
            raise ZstdStreamError("data after the frame's end")
        try:
            return bytes(self._dec.decompress(data))
        except self._error as exc:
            raise ZstdStreamError(str(exc)) from None

    def decode_block(self, block: memoryview, out: memoryview) -> int:
        got = self._decompress(block)
        if len(got) > len(out):
            raise ZstdStreamError("a block decodes to more than a block can hold")
        out[:len(got)] = got
        return len(got)

    def decode_at(self, src: int, btype: int, bsize: int, dst: int, room: int) -> int:
        block = ctypes.string_at(src, 3 + (1 if btype == RLE_BLOCK else bsize))
        got = self._decompress(memoryview(block))
        if len(got) > room:
            raise ZstdStreamError("a block decodes to more than a block can hold")
        ctypes.memmove(dst, got, len(got))
        return len(got)

    def end(self, checksum: memoryview) -> bool:
        if len(checksum):
            self._decompress(checksum)
        return bool(self._dec.eof)

    def close(self) -> None:
        self._dec = None


#: ZSTD_MAGIC_DICTIONARY: a snapshot starting with it goes to pyzstd (see
#: zstdspan.decodable; the buffer-less span decoder would have read it as
#: a formatted dictionary).
DICT_MAGIC = (0xEC30A437).to_bytes(4, "little")


class _Compressor(_Context):
    """A libzstd compression context and an output buffer, one per thread."""

    _CREATE, _FREE, _KIND = "ZSTD_createCCtx", "ZSTD_freeCCtx", "a compressor"

    def __init__(self, lib: Any) -> None:
        super().__init__(lib)
        self._out = bytearray()

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        lib = self._lib
        bound = lib.ZSTD_compressBound(len(data))
        if len(self._out) < bound:
            self._out = bytearray(bound)   # kept: every snapshot is about this size
        dst = buffer_address(memoryview(self._out))
        src = buffer_address(data) if len(data) else 0
        n = self._check(lib.ZSTD_compressCCtx(self._ctx, dst, bound, src or None,
                                              len(data), level))
        return bytes(memoryview(self._out)[:n])


_compressors = threading.local()
_compress_lib: Any = None
_compress_checked = False


def _compressor_lib() -> Any:
    """The system libzstd with its compression functions declared, once
    (None where there is none, or it is a decoder-only build)."""
    global _compress_lib, _compress_checked
    lib = _libzstd()                       # (takes the lock itself)
    with _load_lock:
        if not _compress_checked:
            _compress_lib, _compress_checked = _declare_compression(lib), True
    return _compress_lib


def _declare_compression(lib: Any) -> Any:
    if lib is None:
        return None
    try:
        _declare(lib, _COMPRESSION)
    except AttributeError:
        return None
    return lib


def compress_frame(data: bytes | memoryview, level: int) -> bytes:
    """``data`` as one zstd frame at ``level`` (its content size in the
    header): through the system libzstd, one context per thread, else
    pyzstd.  Thread-safe."""
    compressor: _Compressor | None = getattr(_compressors, "one", None)
    if compressor is None:
        lib = _compressor_lib()
        if lib is None:
            import pyzstd
            return bytes(pyzstd.compress(data, level))
        compressor = _compressors.one = _Compressor(lib)
    return compressor.compress(data, level)


def block_decoder(max_window: int) -> BlockDecoder:
    """A block decoder for frames with windows up to ``max_window`` bytes (the
    buffer-less libzstd decoder allocates no window: the caller's buffers are it)."""
    lib = _libzstd()
    if lib is not None:
        return _LibzstdBlockDecoder(lib)
    return _CopyingBlockDecoder(max_window)
