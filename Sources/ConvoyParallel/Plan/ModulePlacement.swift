import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// One `[[placement]]` section: the modules whose names match `modules` live on the device group `devices`
/// (Hetu's contexts), e.g. `modules = "transformer.h.[0-2]"`, `devices = "cpu:0,cpu:1"`.
///
/// Patterns are globs over module names: `*` matches any run of characters, `?` one character, and `[a-b]` a
/// whole number from a to b (`h.[0-2]` is h.0, h.1, h.2); Hugging Face's `transformer.` prefix is accepted.
public struct ModulePlacement: Sendable, Equatable {
    /// The module-name pattern.
    public var modules: String
    /// The device group, as written (`"cpu:0,cpu:1"`).
    public var devices: String
    /// `"server"`: the devices are parameter servers (`--model ctr`; `modules` is then empty).
    public var role: String?
    /// How the matching modules' dense parameters are synchronised under parameter servers: `"ps"` (on the
    /// servers) or `"allreduce"` (among the workers), overriding `--comm` (`devices` is then empty).
    public var comm: String?

    public init(modules: String, devices: String, role: String? = nil, comm: String? = nil) {
        self.modules = modules
        self.devices = devices
        self.role = role
        self.comm = comm
    }

    /// The world ranks of a `role = "server"` section's devices (`cpu:N` is rank N).
    public func serverRanks() throws -> [Int] {
        do {
            return try DeviceGroup(parsing: devices).devices.map(\.index)
        } catch {
            throw ConvoyError.invalidConfiguration("[[placement]] role = \"server\": devices \"\(devices)\" is not a device group: \(error)")
        }
    }

    /// Whether `name` (a module name such as `h.3` or `wte`) matches the pattern.
    public func matches(_ name: String) -> Bool {
        let pattern = modules.hasPrefix("transformer.") ? String(modules.dropFirst("transformer.".count)) : modules
        return Self.glob(Array(pattern), Array(name))
    }

    private static func glob(_ pattern: [Character], _ name: [Character]) -> Bool {
        guard let head = pattern.first else { return name.isEmpty }
        switch head {
        case "*":
            return (0...name.count).contains { glob(Array(pattern.dropFirst()), Array(name.dropFirst($0))) }
        case "?":
            return !name.isEmpty && glob(Array(pattern.dropFirst()), Array(name.dropFirst()))
        case "[":
            guard let close = pattern.firstIndex(of: "]") else { return name.first == "[" && glob(Array(pattern.dropFirst()), Array(name.dropFirst())) }
            let bounds = String(pattern[1..<close]).split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]) else { return false }
            let digits = name.prefix { $0.isASCII && $0.isNumber }
            // Try every digit prefix, so "[1-2]*" can still match "12".
            for length in stride(from: digits.count, through: 1, by: -1) {
                if let value = Int(String(digits.prefix(length))), (low...high).contains(value),
                   glob(Array(pattern[(close + 1)...]), Array(name.dropFirst(length))) { return true }
            }
            return false
        default:
            return name.first == head && glob(Array(pattern.dropFirst()), Array(name.dropFirst()))
        }
    }
}

/// What `[[placement]]` sections decide: pipeline stages (each a contiguous range of layers on one device
/// group) and their data-parallel replicas (the group's devices; `cpu:N` is world rank N).
public struct PlacementLayout: Sendable, Equatable {
    /// The stages' device groups (world ranks), in model order.
    public var stageRanks: [[Int]]
    /// Layers per stage.
    public var stageLayers: [Int]
    /// Whether any group holds model-parallel tuples (refused until tensor parallelism executes them).
    public var hasModelParallelGroups: Bool
    /// Devices per model-parallel tuple: each tuple is one replica's tensor-parallel group (1 without tuples).
    public var tensorParallelSize = 1

    /// Data-parallel degree of every stage.
    public var dataParallelSize: Int { (stageRanks.first?.count ?? 1) / tensorParallelSize }
    /// Number of ranks the placement uses.
    public var worldSize: Int { stageRanks.reduce(0) { $0 + $1.count } }

    /// Resolves `sections` against the model's modules.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for a malformed device string, a pattern
    ///   that matches nothing, a layer no pattern covers, a device placed twice or outside `worldSize`, a stage
    ///   whose layers are not contiguous, embeddings or head away from the first or last stage, or stages with
    ///   different data-parallel degrees.
    public static func resolve(_ sections: [ModulePlacement], model: ModelShape, worldSize: Int?) throws -> PlacementLayout {
        var groups: [DeviceGroup] = []
        for section in sections {
            do { groups.append(try DeviceGroup(parsing: section.devices)) } catch {
                throw ConvoyError.invalidConfiguration("[[placement]] devices for \"\(section.modules)\": \(error)")
            }
        }
        let layerNames = (0..<model.layers).map(model.layerName)
        let allNames = model.inputModuleNames + layerNames + model.outputModuleNames
        for section in sections where !allNames.contains(where: section.matches) {
            throw ConvoyError.invalidConfiguration("[[placement]] modules = \"\(section.modules)\" matches no module; the model's modules are \(model.inputModuleNames.joined(separator: ", ")), \(model.layerName(0))…\(model.layerName(model.layers - 1)), \(model.outputModuleNames.joined(separator: ", "))")
        }
        func section(of name: String) -> Int? { sections.firstIndex { $0.matches(name) } }
        var layerSection: [Int] = []
        for name in layerNames {
            guard let index = section(of: name) else {
                throw ConvoyError.invalidConfiguration("module \(name) is covered by no [[placement]] section; add a pattern such as modules = \"\(model.layerSequenceName).[0-\(model.layers - 1)]\"")
            }
            layerSection.append(index)
        }
        // Stages: maximal runs of layers on one device group.
        var stageGroups: [DeviceGroup] = [], stageLayers: [Int] = []
        for (layer, index) in layerSection.enumerated() {
            if let last = stageGroups.last, last == groups[index] {
                stageLayers[stageLayers.count - 1] += 1
            } else {
                if stageGroups.contains(groups[index]) {
                    throw ConvoyError.invalidConfiguration("device group \"\(groups[index])\" holds layers that are not contiguous (again at \(layerNames[layer])); a pipeline stage is one contiguous range of layers")
                }
                stageGroups.append(groups[index])
                stageLayers.append(1)
            }
        }
        // Embeddings go with the first layer, the final norm and head with the last, unless a pattern says so too.
        for name in model.inputModuleNames {
            if let index = section(of: name), groups[index] != stageGroups[0] {
                throw ConvoyError.invalidConfiguration("module \(name) is placed on \"\(groups[index])\" but the first layer is on \"\(stageGroups[0])\"; the embeddings run with the first stage")
            }
        }
        for name in model.outputModuleNames {
            if let index = section(of: name), groups[index] != stageGroups[stageGroups.count - 1] {
                throw ConvoyError.invalidConfiguration("module \(name) is placed on \"\(groups[index])\" but the last layer is on \"\(stageGroups[stageGroups.count - 1])\"; the final norm and head run with the last stage")
            }
        }
        var seen: [Int: String] = [:]
        var stageRanks: [[Int]] = []
        for group in stageGroups {
            var ranks: [Int] = []
            for device in group.devices {
                guard device.host == nil, device.kind == "cpu" else {
                    throw ConvoyError.invalidConfiguration("device \(device) in [[placement]]: ranks are CPU devices written cpu:N (world rank N); hosts come from mpirun's hostfile")
                }
                if let worldSize, device.index >= worldSize {
                    throw ConvoyError.invalidConfiguration("device \(device) does not exist: the world has \(worldSize) ranks (cpu:0…cpu:\(worldSize - 1)); place modules on existing devices or start more ranks")
                }
                if let other = seen[device.index] {
                    throw ConvoyError.invalidConfiguration("device \(device) is placed twice (in \"\(other)\" and \"\(group)\"); place each device once")
                }
                seen[device.index] = "\(group)"
                ranks.append(device.index)
            }
            stageRanks.append(ranks)
        }
        let degrees = stageRanks.map(\.count)
        if Set(degrees).count > 1 {
            throw ConvoyError.invalidConfiguration("pipeline stages have different data-parallel degrees (\(degrees.map(String.init).joined(separator: ", ")) devices); give every stage's device group the same number of devices")
        }
        let total = degrees.reduce(0, +)
        if let worldSize, total != worldSize {
            throw ConvoyError.invalidConfiguration("[[placement]] places \(total) devices but the world has \(worldSize) ranks; start \(total) ranks or place every rank")
        }
        if seen.keys.sorted() != Array(0..<total) {
            throw ConvoyError.invalidConfiguration("[[placement]] places devices \(seen.keys.sorted().map { "cpu:\($0)" }.joined(separator: ",")); the devices must be cpu:0…cpu:\(total - 1), one per rank")
        }
        // Hetu's tuples: "(cpu:0,cpu:1),(cpu:2,cpu:3)" is two data-parallel replicas, each a 2-way tensor-parallel group.
        let tupleSizes = Set(stageGroups.flatMap { $0.entries.map(\.count) })
        guard tupleSizes.count <= 1 else {
            throw ConvoyError.invalidConfiguration("[[placement]] device groups hold model-parallel tuples of different sizes (\(tupleSizes.sorted().map(String.init).joined(separator: ", ")) devices); every tuple is one replica's tensor-parallel group, so give them all the same size")
        }
        return PlacementLayout(stageRanks: stageRanks, stageLayers: stageLayers, hasModelParallelGroups: groups.contains(where: \.isModelParallel),
                               tensorParallelSize: tupleSizes.first ?? 1)
    }
}
