import CompassProtocol
import Hummingbird

/// GET /v1/models: the broker's pools, one model each.
extension Gateway {
    func modelJSON(_ pool: PoolInfo) -> JSON {
        .object([("id", .string(pool.name)), ("object", "model"), ("created", .int(startedAt)), ("owned_by", "compass"),
                 ("workers", .int(pool.workers)), ("queued_batches", .int(pool.queuedBatches)), ("running_batches", .int(pool.runningBatches))])
    }

    func models() async -> Response {
        guard let list = await pools.pools() else {
            return APIError.from(CompassFailure(code: CompassFailure.unavailableCode, message: "The compass broker at \(options.broker) does not answer")).response
        }
        return Gateway.json(.object([("object", "list"), ("data", .array(list.map(modelJSON)))]))
    }

    func model(_ name: String) async -> Response {
        guard let list = await pools.pools() else {
            return APIError.from(CompassFailure(code: CompassFailure.unavailableCode, message: "The compass broker at \(options.broker) does not answer")).response
        }
        guard let pool = list.first(where: { $0.name == name }) else { return APIError.modelNotFound(name).response }
        return Gateway.json(modelJSON(pool))
    }
}
