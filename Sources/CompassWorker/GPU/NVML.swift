import CCompassShims
import CompassProtocol

/// The NVIDIA management library, loaded at run time. Where it is absent (no driver, CI) every
/// query returns nil and the worker runs in a clearly logged CPU mode.
public enum NVML {
    /// Why NVML is unusable, or nil when it works.
    public static var unavailableReason: String? {
        var buffer = [CChar](repeating: 0, count: 256)
        if compass_nvml_load(&buffer, Int32(buffer.count)) == 0 { return nil }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static var isAvailable: Bool { unavailableReason == nil }

    /// GPUs on this host, or nil without NVML.
    public static var deviceCount: Int? {
        let n = compass_nvml_device_count()
        return n >= 0 ? Int(n) : nil
    }

    /// One GPU's identity, memory and utilization; nil without NVML or for a bad index.
    public static func info(index: Int) -> GPUInfo? {
        var uuid = [CChar](repeating: 0, count: 96)
        var name = [CChar](repeating: 0, count: 96)
        var used: UInt64 = 0, total: UInt64 = 0
        var utilization: UInt32 = 0
        guard compass_nvml_device_info(UInt32(index), &uuid, Int32(uuid.count), &name, Int32(name.count),
                                       &used, &total, &utilization) == 0 else { return nil }
        func text(_ b: [CChar]) -> String { String(decoding: b.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return GPUInfo(index: index, uuid: text(uuid), name: text(name), memoryUsedMiB: Int(used >> 20),
                       memoryTotalMiB: Int(total >> 20), utilizationPercent: Int(utilization))
    }

    /// Figures for `indices`: NVML's where it works, the bare index otherwise.
    public static func infos(_ indices: [Int]) -> [GPUInfo] {
        indices.map { info(index: $0) ?? GPUInfo(index: $0) }
    }
}
