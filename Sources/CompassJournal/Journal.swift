import CompassProtocol
import CompassScheduler
import Foundation
import GRDB

/// The broker's durable record: an SQLite database in WAL mode holding every accepted batch
/// (payload included), its attempt bookkeeping, and its outcome until the producer acknowledges it.
///
/// One broker thread owns it. Writes are group-committed: all the operations of one poll turn go
/// in one transaction, and the broker sends that turn's messages only after it commits.
public final class Journal {
    public let path: String
    let queue: DatabaseQueue

    public enum Durability: String, Sendable, CaseIterable {
        /// fsync on every commit: ACCEPTED survives a power loss.
        case full
        /// fsync at checkpoints only: ACCEPTED survives a broker crash, not a power loss.
        case normal
    }

    /// Opens (or creates) the journal; checks it is sound before the broker trusts it.
    public init(path: String, durability: Durability = .full) throws {
        self.path = path
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
            throw JournalError("the directory \(directory) does not exist")
        }
        var config = Configuration()
        config.journalMode = .wal
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(durability == .full ? "FULL" : "NORMAL")")
        }
        do {
            queue = try DatabaseQueue(path: path, configuration: config)
            let check = try queue.read { db in try String.fetchOne(db, sql: "PRAGMA quick_check") }
            guard check == "ok" else { throw JournalError("integrity check failed: \(check ?? "no answer")") }
            try queue.write { db in
                try db.execute(sql: """
                    CREATE TABLE IF NOT EXISTS batch (
                        id TEXT PRIMARY KEY NOT NULL,
                        session TEXT NOT NULL,
                        pool TEXT NOT NULL,
                        meta BLOB NOT NULL,
                        max_attempts INTEGER NOT NULL,
                        payload BLOB NOT NULL,
                        accepted_at INTEGER NOT NULL,
                        attempt INTEGER NOT NULL DEFAULT 0,
                        charged INTEGER NOT NULL DEFAULT 0,
                        kills INTEGER NOT NULL DEFAULT 0,
                        outcome TEXT,
                        stats BLOB,
                        result BLOB,
                        code TEXT,
                        message TEXT,
                        finished_at INTEGER
                    );
                    CREATE INDEX IF NOT EXISTS batch_outcome ON batch(outcome, pool);
                    """)
            }
        } catch let error as JournalError {
            throw JournalError("cannot use the journal \(path): \(error.message)")
        } catch let error as DatabaseError {
            let hint = error.resultCode == .SQLITE_NOTADB || error.resultCode == .SQLITE_CORRUPT
                ? " (the file is not a compass journal or is corrupt: move it aside to start empty, or restore it)" : ""
            throw JournalError("cannot use the journal \(path): \(error.message ?? "\(error)")\(hint)")
        } catch {
            throw JournalError("cannot use the journal \(path): \(error)")
        }
    }

    static func nowMilliseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func data<P: BatchPayload>(_ p: P) -> Data { Data(p.payloadBytes) }

    /// Makes one turn's operations durable, in one transaction.
    public func commit<P: BatchPayload>(_ operations: [JournalOperation<P>]) throws {
        guard !operations.isEmpty else { return }
        do {
            try queue.write { db in
                let now = Journal.nowMilliseconds()
                for op in operations {
                    switch op {
                    case .accepted(let b):
                        try db.cachedStatement(sql: """
                            INSERT OR REPLACE INTO batch (id, session, pool, meta, max_attempts, payload, accepted_at)
                            VALUES (?, ?, ?, ?, ?, ?, ?)
                            """).execute(arguments: [b.id, b.session.description, b.pool, Data(b.meta.bytes), Int(b.maxAttempts),
                                                     Journal.data(b.payload), now])
                    case .attempt(let id, let attempt, let charged, let kills):
                        try db.cachedStatement(sql: "UPDATE batch SET attempt = ?, charged = ?, kills = ? WHERE id = ?")
                            .execute(arguments: [Int(attempt), Int(charged), Int(kills), id])
                    case .finished(let id, .result(let stats, let payload)):
                        try db.cachedStatement(sql: "UPDATE batch SET outcome = 'result', stats = ?, result = ?, finished_at = ? WHERE id = ?")
                            .execute(arguments: [Journal.data(stats), Journal.data(payload), now, id])
                    case .finished(let id, .failed(let code, let message, let partial)):
                        try db.cachedStatement(sql: "UPDATE batch SET outcome = 'failed', code = ?, message = ?, result = ?, finished_at = ? WHERE id = ?")
                            .execute(arguments: [code.rawValue, message, partial.map { Journal.data($0) }, now, id])
                    case .removed(let id):
                        try db.cachedStatement(sql: "DELETE FROM batch WHERE id = ?").execute(arguments: [id])
                    case .rebound(let id, let session):
                        try db.cachedStatement(sql: "UPDATE batch SET session = ? WHERE id = ?").execute(arguments: [session.description, id])
                    }
                }
            }
        } catch {
            throw JournalError("cannot write the journal \(path): \(error)")
        }
    }

    /// Every batch the journal holds, oldest first, for recovery.
    public func load<P: BatchPayload>(_: P.Type = P.self) throws -> [BatchSnapshot<P>] {
        let now = Journal.nowMilliseconds()
        return try queue.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM batch ORDER BY accepted_at, rowid").compactMap { row -> BatchSnapshot<P>? in
                let metaData: Data = row["meta"]
                guard let meta = metaData.withUnsafeBytes({ BatchMeta(bytes: $0) }) else { return nil }
                let payload: Data = row["payload"]
                var outcome: JournalOutcome<P>?
                switch row["outcome"] as String? {
                case "result":
                    let stats: Data = row["stats"] ?? Data("{}".utf8)
                    let result: Data = row["result"] ?? Data("[]".utf8)
                    outcome = .result(stats: P(payloadBytes: [UInt8](stats)), payload: P(payloadBytes: [UInt8](result)))
                case "failed":
                    let partial: Data? = row["result"]
                    outcome = .failed(code: AnyFailureCode(rawValue: row["code"] ?? FailureCode.engineError.rawValue), message: row["message"] ?? "",
                                      partial: partial.map { P(payloadBytes: [UInt8]($0)) })
                default:
                    outcome = nil
                }
                let accepted: Int64 = row["accepted_at"]
                return BatchSnapshot(
                    id: row["id"], session: SessionKey(row["session"] as String), pool: row["pool"], meta: meta,
                    maxAttempts: UInt16(clamping: row["max_attempts"] as Int), payload: P(payloadBytes: [UInt8](payload)),
                    ageMilliseconds: UInt64(max(0, now - accepted)), attempt: UInt32(clamping: row["attempt"] as Int),
                    charged: UInt32(clamping: row["charged"] as Int), kills: UInt32(clamping: row["kills"] as Int), outcome: outcome)
            }
        }
    }
}

/// A journal that cannot be opened, read or written: what and why, for the operator.
public struct JournalError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
