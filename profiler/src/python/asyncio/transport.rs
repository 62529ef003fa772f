//! The descriptor of the socket behind a stream a task awaits, read from the stream object:
//! its transport (an attribute, or a `__slots__` member: aiohttp's protocols keep `transport`
//! in a slot), then the transport's socket. asyncio's own transports hold a `socket.socket` in
//! `_sock`; uvloop's are Cython `cdef` classes that hold a libuv handle instead, whose
//! descriptor is read from the handle.
//!
//! **uvloop.** `TCPTransport` ← `UVStream` ← `UVBaseTransport` ← `UVSocketHandle` ←
//! `UVHandle`: the root class's first field (after the object header and Cython's vtable
//! pointer) is `uv_handle_t *_handle`, and uvloop points the handle's `data` back at the
//! transport object. Cython chooses the struct's layout per build and no table describes it,
//! so the pointer is not taken from a fixed offset: it is the word among the object's first
//! ones that points to a handle whose `data` is the object itself and whose `type` is a TCP or
//! pipe stream (a coincidence would need both). The descriptor is `uv_stream_t.io_watcher.fd`,
//! at a fixed offset: libuv keeps its public structs ABI-stable within a major version, and
//! every uvloop release bundles libuv 1.x (`tests/probes/uvloop_layout.py` checks the offsets
//! live). Every read is bounded and checked; anything unexpected gives no descriptor.
//!
//! **TLS.** A TLS stream's transport is an `_SSLProtocolTransport` that writes through its SSL
//! protocol to the TCP transport below it, which holds the socket. asyncio's (every version
//! 3.8+) keeps them as attributes: `_ssl_protocol`, then the protocol's `_transport`.
//! uvloop's are `cdef` classes again (`_SSLProtocolTransport` holds `_loop`, `_ssl_protocol`,
//! `_closed`, `context`; `SSLProtocol` holds `_transport` about a dozen words in, after its
//! vtable pointer and the handshake state), so each is recognized by type among the object's
//! first words: the protocol is the `uvloop.loop.SSLProtocol` object, the transport below it
//! the uvloop transport (not the TLS one it also points back to) whose libuv handle checks out.
use super::reader::Reader;
use crate::host::memory::{ReadMemory, field_i32, field_u64};
use crate::python::thread_names::{attribute_items, dict_lookup, find_str_keys, read_ptr};

/// Where a stream object keeps its transport: asyncio's `StreamReader._transport`, aiohttp's
/// `StreamReader._protocol.transport`, and a protocol's own `transport` (aiohttp's
/// `ResponseHandler`, which its `DataQueue.read` has as `self`).
const TRANSPORT_PATHS: [&[&str]; 3] = [&["_transport"], &["_protocol", "transport"], &["transport"]];

/// `PyMemberDef.type` of object members, the only slots followed: `T_OBJECT` (NULL reads as
/// None) and `T_OBJECT_EX` (`Py_T_OBJECT_EX`; what `__slots__` makes).
const MEMBER_OBJECT: [i32; 2] = [6, 16];
/// `PyMemberDef`: `name` (char*), `type` (int) at 8, `offset` (Py_ssize_t) at 16.
const MEMBER_DEF_TYPE: i64 = 8;
const MEMBER_DEF_OFFSET: i64 = 16;
/// `PyMemberDescrObject.d_member`, this many bytes past the object header (`PyDescr_COMMON`
/// is the header, `d_type`, `d_name` and `d_qualname`), in every version 3.3+.
const DESCR_MEMBER_PAST_HEADER: i64 = 24;
/// `PyTypeObject.tp_dict` and `tp_base` lie this many bytes before `tp_dictoffset` (then
/// `tp_descr_get`, `tp_descr_set`): the order has not changed since Python 2.2.
const TYPE_DICT_BEFORE_DICTOFFSET: i64 = 24;
const TYPE_BASE_BEFORE_DICTOFFSET: i64 = 32;
/// Base types followed up from an object's type looking for a slot.
const MAX_BASES: usize = 16;

/// libuv 1.x on 64-bit unix: `uv_handle_t.data` (0), `.loop` (8), `.type` (an enum, 16).
const UV_HANDLE_LOOP: i64 = 8;
const UV_HANDLE_TYPE: i64 = 16;
/// `uv_handle_type` values of the streams followed: `UV_NAMED_PIPE` (unix sockets) and
/// `UV_TCP` (the enum's order is libuv's `UV_HANDLE_TYPE_MAP`, fixed within 1.x).
const UV_NAMED_PIPE: u32 = 7;
const UV_TCP: u32 = 12;
/// `uv_stream_t.io_watcher.fd`: the handle's 96 bytes (`UV_HANDLE_FIELDS`), `write_queue_size`,
/// `alloc_cb`, `read_cb`, `connect_req`, `shutdown_req`, then `uv__io_t io_watcher` (`cb`,
/// `pending_queue[2]`, `watcher_queue[2]`, `pevents`, `events`, `fd`): 136 + 48.
const UV_STREAM_FD: i64 = 184;
/// Words of a uvloop transport searched for its handle pointer, after the object header
/// (Cython's vtable pointer comes first, `_handle` second).
const HANDLE_SEARCH_WORDS: u64 = 8;
/// The prefix of uvloop's own types (`tp_name` of a Cython class is `module.Class`).
const UVLOOP_TYPES: &str = "uvloop.loop.";
/// The TLS transport's type, asyncio's (`asyncio.sslproto`, a Python class: `tp_name` is the
/// bare class name) and uvloop's (`uvloop.loop._SSLProtocolTransport`).
const TLS_TRANSPORT: &str = "_SSLProtocolTransport";
/// uvloop's SSL protocol type.
const UVLOOP_SSL_PROTOCOL: &str = "uvloop.loop.SSLProtocol";
/// Words searched for the SSL protocol in uvloop's TLS transport, and for the transport below
/// in the protocol (it is the 11th or 12th field of `SSLProtocol`, depending on padding).
const TLS_TRANSPORT_WORDS: u64 = 8;
const SSL_PROTOCOL_WORDS: u64 = 24;
/// TLS over TLS (a proxy's tunnel) is followed this many levels down.
const MAX_TLS_LEVELS: u32 = 2;

impl<M: ReadMemory> Reader<'_, M> {
    /// The descriptor of the socket behind a stream object (asyncio's `StreamReader`, aiohttp's
    /// `StreamReader` or `ResponseHandler`), on asyncio's loops and uvloop's.
    pub fn socket_fd(&mut self, stream: u64) -> Option<i32> {
        TRANSPORT_PATHS.iter().find_map(|path| {
            let transport = self.follow(stream, path)?;
            self.transport_fd(transport, MAX_TLS_LEVELS)
        })
    }

    /// The descriptor behind a transport: its socket, its libuv handle's, or (TLS) the one of
    /// the transport its SSL protocol writes to, `levels` deep at most.
    fn transport_fd(&mut self, transport: u64, levels: u32) -> Option<i32> {
        if let Some(sock) = self.attribute(transport, "_sock") {
            return self.sock_fd(sock);
        }
        let tls = self.type_name(transport)?.ends_with(TLS_TRANSPORT);
        if !tls {
            return self.uvloop_fd(transport);
        }
        let below =
            self.follow(transport, &["_ssl_protocol", "_transport"]).or_else(|| self.uvloop_tls_below(transport))?;
        if below == transport || levels == 0 {
            return None;
        }
        self.transport_fd(below, levels - 1)
    }

    /// The transport below a uvloop TLS transport: its SSL protocol recognized by type among
    /// its first words, then, among the protocol's, a uvloop transport other than this one
    /// (the protocol points back to it as `_app_transport`) with a libuv stream handle.
    fn uvloop_tls_below(&mut self, tls: u64) -> Option<u64> {
        if !self.type_name(tls)?.starts_with(UVLOOP_TYPES) {
            return None;
        }
        let protocol = self
            .object_words(tls, TLS_TRANSPORT_WORDS)?
            .into_iter()
            .find(|&p| self.type_name(p) == Some(UVLOOP_SSL_PROTOCOL))?;
        self.object_words(protocol, SSL_PROTOCOL_WORDS)?.into_iter().find(|&p| {
            p != tls
                && self.type_name(p).is_some_and(|n| n.starts_with(UVLOOP_TYPES) && !n.ends_with(TLS_TRANSPORT))
                && self.uvloop_fd(p).is_some()
        })
    }

    /// The non-null, aligned words among an object's first `words` after its header, other
    /// than the object itself: candidate pointers to the objects a `cdef` class holds.
    fn object_words(&mut self, obj: u64, words: u64) -> Option<Vec<u64>> {
        let bytes = self.mem.bytes(obj.checked_add(self.l.header())?, (words * 8) as usize)?;
        Some(
            bytes
                .chunks_exact(8)
                .filter_map(|w| field_u64(w, 0))
                .filter(|&p| p != 0 && p != obj && p.is_multiple_of(8))
                .collect(),
        )
    }

    /// The object reached from `obj` through the attributes `path`.
    fn follow(&mut self, obj: u64, path: &[&str]) -> Option<u64> {
        path.iter().try_fold(obj, |at, name| self.attribute(at, name))
    }

    /// `obj.name`, from the instance's attributes or, failing that, a `__slots__` member.
    pub fn attribute(&mut self, obj: u64, name: &str) -> Option<u64> {
        let in_dict =
            attribute_items(self.mem, self.o, obj).and_then(|attrs| find_str_keys(self.mem, self.o, &attrs, [name])[0]);
        in_dict.or_else(|| self.slot(obj, name))
    }

    /// A `__slots__` member of `obj` (or any object member of a C type): the member
    /// descriptor named `name` in its type's or a base's dict says at which offset the object
    /// holds it. Offsets are cached per type; each read is checked against the type's size.
    fn slot(&mut self, obj: u64, name: &str) -> Option<u64> {
        let o = self.o;
        let ty = read_ptr(self.mem, obj, o.object_type)?;
        let basicsize = self.mem.u64(ty.checked_add(u64::try_from(o.type_name + 8).ok()?)?)?;
        let key = (ty, name.to_string());
        let offset = match self.types.slots.get(&key) {
            Some(&offset) => offset,
            None => {
                let offset = self.slot_offset(ty, name);
                self.types.remember_slot(key, offset);
                offset
            }
        }?;
        let header = self.l.header();
        if offset < header || !offset.is_multiple_of(8) || offset.checked_add(8)? > basicsize {
            return None;
        }
        read_ptr(self.mem, obj, offset as i64)
    }

    /// Where instances of `ty` keep the member `name`: its member descriptor's `PyMemberDef`
    /// offset, from the first type up the `tp_base` chain whose dict has the name.
    fn slot_offset(&mut self, ty: u64, name: &str) -> Option<u64> {
        let o = self.o;
        let mut at = ty;
        for _ in 0..MAX_BASES {
            let dict = read_ptr(self.mem, at, o.type_dictoffset - TYPE_DICT_BEFORE_DICTOFFSET)?;
            if let Some(descr) = dict_lookup(self.mem, o, dict, [name]).and_then(|[d]| d) {
                // A property, a method or a class attribute: not a slot.
                if self.type_name(descr)? != "member_descriptor" {
                    return None;
                }
                let past_header = i64::try_from(self.l.header()).ok()? + DESCR_MEMBER_PAST_HEADER;
                let member = read_ptr(self.mem, descr, past_header)?;
                let def = self.mem.bytes(member, MEMBER_DEF_OFFSET as usize + 8)?;
                if !MEMBER_OBJECT.contains(&field_i32(&def, MEMBER_DEF_TYPE)?) {
                    return None;
                }
                return field_u64(&def, MEMBER_DEF_OFFSET);
            }
            at = read_ptr(self.mem, at, o.type_dictoffset - TYPE_BASE_BEFORE_DICTOFFSET)?;
        }
        None
    }

    /// `socket.socket`'s descriptor: `PySocketSockObject.sock_fd`, an int right after the
    /// object header (the same in every version).
    fn sock_fd(&mut self, sock: u64) -> Option<i32> {
        if self.type_name(sock)? != "socket" {
            return None;
        }
        let b = self.mem.bytes(sock.checked_add(self.l.header())?, 4)?;
        Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).filter(|fd| (0..1 << 24).contains(fd))
    }

    /// A uvloop transport's descriptor, from its libuv stream handle (see the module's notes).
    fn uvloop_fd(&mut self, transport: u64) -> Option<i32> {
        if !self.type_name(transport)?.starts_with(UVLOOP_TYPES) {
            return None;
        }
        let handle = self
            .object_words(transport, HANDLE_SEARCH_WORDS)?
            .into_iter()
            .find(|&p| self.is_stream_handle_of(p, transport))?;
        let fd = field_i32(&self.mem.bytes(handle.checked_add(UV_STREAM_FD as u64)?, 4)?, 0)?;
        (0..1 << 24).contains(&fd).then_some(fd)
    }

    /// Is `handle` a libuv TCP or pipe handle whose `data` is `owner` (uvloop's back pointer)?
    fn is_stream_handle_of(&mut self, handle: u64, owner: u64) -> bool {
        let Some(head) = self.mem.bytes(handle, UV_HANDLE_TYPE as usize + 4) else { return false };
        let (Some(data), Some(uv_loop), Some(kind)) =
            (field_u64(&head, 0), field_u64(&head, UV_HANDLE_LOOP), field_i32(&head, UV_HANDLE_TYPE))
        else {
            return false;
        };
        data == owner && uv_loop != 0 && [UV_NAMED_PIPE, UV_TCP].contains(&(kind as u32))
    }
}
