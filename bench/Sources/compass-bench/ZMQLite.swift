import CBenchZMQ
import Foundation

#if canImport(Glibc)
import Glibc
#endif

// A deliberately thin libzmq layer for the bench: every call is the C API, frames are zmq_msg_t
// owned by `Msg`, payloads the bench sends are zero-copy views of buffers that live forever.

/// Monotonic nanoseconds (CLOCK_MONOTONIC: comparable across the processes of this machine).
@inline(__always) func monoNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

final class Ctx: @unchecked Sendable {
    let h: UnsafeMutableRawPointer
    init(ioThreads: Int32 = 1) {
        h = zmq_ctx_new()!
        zmq_ctx_set(h, ZMQ_IO_THREADS, ioThreads)
        zmq_ctx_set(h, ZMQ_MAX_SOCKETS, 8192)
    }
    deinit { while zmq_ctx_term(h) == -1 && zmq_errno() == EINTR {} }
}

/// One received or to-be-sent frame.
final class Msg {
    let p: UnsafeMutablePointer<zmq_msg_t>
    init() {
        p = .allocate(capacity: 1)
        zmq_msg_init(p)
    }
    /// A frame that points at `buffer` without copying it: the buffer must outlive every send.
    init(borrowing buffer: UnsafeRawBufferPointer) {
        p = .allocate(capacity: 1)
        zmq_msg_init_data(p, UnsafeMutableRawPointer(mutating: buffer.baseAddress!), buffer.count, nil, nil)
    }
    deinit {
        zmq_msg_close(p)
        p.deallocate()
    }
    var count: Int { zmq_msg_size(p) }
    var raw: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: zmq_msg_data(p), count: zmq_msg_size(p)) }
    var bytes: [UInt8] { Array(raw) }
    var string: String { String(decoding: raw, as: UTF8.self) }
    var u8: UInt8 { count >= 1 ? raw[0] : 0 }
    var u32: UInt32 {
        let b = raw
        guard b.count == 4 else { return 0 }
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }
}

/// A forever-living byte buffer (payloads, headers) that frames can point at without copying.
final class StaticBytes: @unchecked Sendable {
    let base: UnsafeMutableRawBufferPointer
    init(_ bytes: [UInt8]) {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { src in if src.count > 0 { b.copyMemory(from: src) } }
        base = b
        count = bytes.count
    }
    let count: Int
    var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base.baseAddress, count: count) }
    // Never deallocated: libzmq may still reference it from a queued message.
}

enum Part {
    case bytes([UInt8])
    case string(String)
    case u32(UInt32)
    case shared(StaticBytes)
    case msg(Msg) // sent by moving it (the Msg is left empty)
}

final class Sock {
    let h: UnsafeMutableRawPointer
    let ctx: Ctx
    init(_ ctx: Ctx, _ type: Int32) {
        self.ctx = ctx
        h = zmq_socket(ctx.h, type)!
        setInt(ZMQ_LINGER, 0)
    }
    deinit { zmq_close(h) }

    func setInt(_ option: Int32, _ value: Int32) {
        var v = value
        zmq_setsockopt(h, option, &v, MemoryLayout<Int32>.size)
    }
    func setBytes(_ option: Int32, _ value: [UInt8]) {
        value.withUnsafeBytes { _ = zmq_setsockopt(h, option, $0.baseAddress, $0.count) }
    }
    /// Makes this (connecting) socket a CURVE client: the server's public key and its own pair,
    /// as 40-character Z85 strings (libzmq takes them as text of that length). Before connect.
    func setCurveClient(_ keys: CurveClient) throws {
        for (option, key) in [(ZMQ_CURVE_SERVERKEY, keys.serverKey), (ZMQ_CURVE_PUBLICKEY, keys.publicKey),
                              (ZMQ_CURVE_SECRETKEY, keys.secretKey)] {
            let text = Array(key.utf8)
            guard text.count == 40, text.withUnsafeBytes({ zmq_setsockopt(h, option, $0.baseAddress, 40) }) == 0 else {
                throw BenchError("CURVE key option \(option): \(String(cString: zmq_strerror(zmq_errno())))")
            }
        }
    }
    func bind(_ endpoint: String) throws {
        guard zmq_bind(h, endpoint) == 0 else { throw BenchError("bind \(endpoint): \(String(cString: zmq_strerror(zmq_errno())))") }
    }
    func connect(_ endpoint: String) throws {
        guard zmq_connect(h, endpoint) == 0 else { throw BenchError("connect \(endpoint): \(String(cString: zmq_strerror(zmq_errno())))") }
    }
    var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 512)
        var size = buffer.count
        zmq_getsockopt(h, ZMQ_LAST_ENDPOINT, &buffer, &size)
        return String(cString: buffer)
    }

    /// Sends one multipart message; false when it would block (dontWait) or failed.
    @discardableResult
    func send(_ parts: [Part], dontWait: Bool = false) -> Bool {
        let last = parts.count - 1
        for (i, part) in parts.enumerated() {
            var flags: Int32 = i < last ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            var rc: Int32
            repeat {
                switch part {
                case .bytes(let b): rc = b.withUnsafeBytes { zmq_send(h, $0.baseAddress, $0.count, flags) }
                case .string(let s): rc = Array(s.utf8).withUnsafeBytes { zmq_send(h, $0.baseAddress, $0.count, flags) }
                case .u32(let v):
                    var be = v.bigEndian
                    rc = zmq_send(h, &be, 4, flags)
                case .shared(let s):
                    let m = Msg(borrowing: s.buffer)
                    rc = zmq_msg_send(m.p, h, flags)
                case .msg(let m): rc = zmq_msg_send(m.p, h, flags)
                }
            } while rc == -1 && zmq_errno() == EINTR
            if rc == -1 { return false }
        }
        return true
    }

    /// Receives one multipart message, or nil when none is waiting (dontWait) or on error.
    func receive(dontWait: Bool = true) -> [Msg]? {
        var frames: [Msg] = []
        frames.reserveCapacity(8)
        while true {
            let m = Msg()
            var rc: Int32
            repeat {
                rc = zmq_msg_recv(m.p, h, frames.isEmpty && dontWait ? ZMQ_DONTWAIT : 0)
            } while rc == -1 && zmq_errno() == EINTR
            if rc == -1 { return frames.isEmpty ? nil : frames }
            frames.append(m)
            if zmq_msg_more(m.p) == 0 { return frames }
        }
    }

    func setReceiveTimeout(ms: Int32) { setInt(ZMQ_RCVTIMEO, ms) }
}

/// zmq_poll over sockets (readability only).
final class Poller {
    var items: [zmq_pollitem_t] = []
    func add(_ s: Sock) -> Int {
        items.append(zmq_pollitem_t(socket: s.h, fd: -1, events: Int16(ZMQ_POLLIN), revents: 0))
        return items.count - 1
    }
    @discardableResult
    func poll(timeoutMs: Int) -> Int {
        let rc = items.withUnsafeMutableBufferPointer { zmq_poll($0.baseAddress, Int32($0.count), timeoutMs) }
        if rc < 0 { for i in items.indices { items[i].revents = 0 }; return 0 }
        return Int(rc)
    }
    @inline(__always) func readable(_ i: Int) -> Bool { items[i].revents & Int16(ZMQ_POLLIN) != 0 }
}

func zmqVersion() -> String {
    var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
    zmq_version(&a, &b, &c)
    return "\(a).\(b).\(c)"
}

/// Milliseconds to wait until `deadline` (ns), rounded up, at least 0.
@inline(__always) func msUntil(_ deadline: UInt64, now: UInt64) -> Int {
    deadline <= now ? 0 : Int((deadline - now + 999_999) / 1_000_000)
}

/// Asks the kernel to kill this process when its parent dies (no orphan survives a crashed suite).
func dieWithParent() {
    _ = bench_die_with_parent(SIGKILL)
    if getppid() == 1 { exit(3) }
}

/// A CURVE client's keys (Z85): the broker's public key and this client's pair.
struct CurveClient {
    var serverKey: String
    var publicKey: String
    var secretKey: String

    /// `--curve-server-key FILE|Z85 --curve-key FILE`, as compass-worker takes them.
    init(serverKey: String, keyFile: String) throws {
        self.serverKey = try CurveCert.publicKey(serverKey)
        let text = try String(contentsOfFile: keyFile, encoding: .utf8)
        guard let pub = CurveCert.value("public-key", in: text), let sec = CurveCert.value("secret-key", in: text) else {
            throw BenchError("\(keyFile) holds no CURVE key pair")
        }
        publicKey = pub
        secretKey = sec
    }
}

/// CURVE key pairs and certificate files in the format `compass keys new` writes (ZeroMQ's zcert,
/// docs/security.md): NAME.key (mode 0600, public and secret key) and NAME.pub (public key only).
enum CurveCert {
    /// A fresh pair from libzmq (Z85, 40 characters each).
    static func keypair() throws -> (publicKey: String, secretKey: String) {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else {
            throw BenchError("zmq_curve_keypair: \(String(cString: zmq_strerror(zmq_errno()))) (is libzmq built with CURVE?)")
        }
        return (String(cString: pub), String(cString: sec))
    }

    /// Writes `dir/NAME.key` and `dir/NAME.pub`; returns the key file's path.
    @discardableResult
    static func create(name: String, in dir: String) throws -> (key: String, pub: String, publicKey: String) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let k = try keypair()
        let head = "#   ZeroMQ CURVE certificate written by compass-bench\nmetadata\n    name = \"\(name)\"\ncurve\n    public-key = \"\(k.publicKey)\"\n"
        let keyPath = "\(dir)/\(name).key", pubPath = "\(dir)/\(name).pub"
        guard FileManager.default.createFile(atPath: keyPath, contents: Data((head + "    secret-key = \"\(k.secretKey)\"\n").utf8),
                                             attributes: [.posixPermissions: 0o600]),
              FileManager.default.createFile(atPath: pubPath, contents: Data(head.utf8), attributes: [.posixPermissions: 0o644]) else {
            throw BenchError("cannot write the key files of \(name) in \(dir)")
        }
        return (keyPath, pubPath, k.publicKey)
    }

    /// The value of a `key = "…"` line.
    static func value(_ key: String, in text: String) -> String? {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == key else { continue }
            return parts[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        return nil
    }

    /// A public key given as 40 Z85 characters or as a certificate file holding one.
    static func publicKey(_ keyOrPath: String) throws -> String {
        if keyOrPath.utf8.count == 40 && !FileManager.default.fileExists(atPath: keyOrPath) { return keyOrPath }
        guard let text = try? String(contentsOfFile: keyOrPath, encoding: .utf8), let key = value("public-key", in: text) else {
            throw BenchError("\(keyOrPath) is neither a Z85 key nor a certificate with a public-key line")
        }
        return key
    }
}
