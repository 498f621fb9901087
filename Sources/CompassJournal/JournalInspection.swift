import CompassProtocol
import Foundation
import GRDB

/// What a journal holds, per pool, for `compass journal stats`.
public struct JournalStats: Codable, Sendable {
    public struct Pool: Codable, Sendable {
        public var pool: String
        /// Not yet dispatched, or dispatched and unfinished at the last write.
        public var queued: Int
        public var dispatched: Int
        /// Finished and waiting for their producer's ACK.
        public var results: Int
        public var failed: Int
        public var bytes: Int
    }

    public var path: String
    public var fileBytes: Int
    public var pools: [Pool]
}

extension Journal {
    /// Opens a journal for inspection only (it may be in use by a running broker).
    public static func inspect(path: String) throws -> Journal {
        guard FileManager.default.fileExists(atPath: path) else { throw JournalError("\(path) does not exist") }
        return try Journal(path: path)
    }

    public func stats() throws -> JournalStats {
        let rows = try queue.read { db in
            try Row.fetchAll(db, sql: """
                SELECT pool,
                       SUM(outcome IS NULL AND attempt = 0) AS queued,
                       SUM(outcome IS NULL AND attempt > 0) AS dispatched,
                       SUM(outcome = 'result') AS results,
                       SUM(outcome = 'failed') AS failed,
                       SUM(length(payload) + IFNULL(length(result), 0) + IFNULL(length(stats), 0)) AS bytes
                FROM batch GROUP BY pool ORDER BY pool
                """)
        }
        let size = ["", "-wal"].reduce(0) { total, suffix in
            total + ((try? FileManager.default.attributesOfItem(atPath: path + suffix)[.size] as? Int) ?? 0)
        }
        return JournalStats(path: path, fileBytes: size, pools: rows.map { row in
            .init(pool: row["pool"], queued: row["queued"] ?? 0, dispatched: row["dispatched"] ?? 0,
                  results: row["results"] ?? 0, failed: row["failed"] ?? 0, bytes: row["bytes"] ?? 0)
        })
    }

    /// Folds the WAL into the database and rebuilds it to its smallest size. Needs the broker stopped.
    public func compact() throws -> (before: Int, after: Int) {
        let before = try stats().fileBytes
        do {
            try queue.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
                try db.execute(sql: "VACUUM")
                try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
            }
        } catch {
            throw JournalError("cannot compact \(path) (is a broker using it? stop it first): \(error)")
        }
        return (before, try stats().fileBytes)
    }

    /// Writes, one JSON line each, every request that failed: those of failed batches and those
    /// with a per-request error in a result. The lines are the original requests, ready to submit
    /// again. Returns how many were written.
    public func exportFailed(to output: String) throws -> Int {
        let rows = try queue.read { db in
            try Row.fetchAll(db, sql: "SELECT outcome, payload, result FROM batch WHERE outcome IS NOT NULL ORDER BY accepted_at, rowid")
        }
        var lines: [Data] = []
        for row in rows {
            let payload: Data = row["payload"]
            let requests = ((try? JSONSerialization.jsonObject(with: payload)) as? [[String: Any]]) ?? []
            var failedIDs: Set<String>?
            if row["outcome"] as String? == "result" {
                let result: Data = row["result"] ?? Data("[]".utf8)
                let results = ((try? JSONSerialization.jsonObject(with: result)) as? [[String: Any]]) ?? []
                failedIDs = Set(results.filter { !($0["error"] is NSNull) && $0["error"] != nil }.compactMap { $0["custom_id"] as? String })
            }
            for request in requests {
                if let failedIDs, !failedIDs.contains(request["custom_id"] as? String ?? "") { continue }
                lines.append(try JSONSerialization.data(withJSONObject: request, options: [.sortedKeys, .withoutEscapingSlashes]))
            }
        }
        var out = Data()
        for line in lines { out += line + Data("\n".utf8) }
        try out.write(to: URL(fileURLWithPath: output))
        return lines.count
    }
}
