import ConvoyComm
import ConvoyNN
import ConvoyParallel
import Foundation

/// What `convoy plan` prints of a ``ConvoyParallel/ParallelPlan``: the mesh, the features in use, the groups
/// along every axis, and every rank's coordinates, layers, parameters and bytes.
struct LayoutReport {
    /// One rank's share.
    struct Rank {
        let rank: Int
        let coordinates: [(axis: MeshAxis, position: Int)]
        let layers: String
        let parameters: Int
        let bytes: Int
    }

    let plan: ParallelPlan
    let ranks: [Rank]

    init(plan: ParallelPlan, model: GPTConfiguration, pipeline: PipelinePlan?, optimizer: ZeROMemoryPlan.OptimizerKind) throws {
        self.plan = plan
        let mesh = plan.mesh
        ranks = try (0..<mesh.size).map { rank in
            let stage = pipeline?.stages[mesh.position(along: .pp, of: rank)]
            let parameters = stage?.parameters ?? model.parameterCount
            var held = stage.map { stage in
                stage.chunks.map { "h.\($0.layers.lowerBound)" + ($0.layers.count > 1 ? "–\($0.layers.upperBound - 1)" : "") }
            } ?? ["h.0" + (model.layers > 1 ? "–\(model.layers - 1)" : "")]
            if stage?.holdsEmbeddings ?? true { held.insert("embeddings", at: 0) }
            if stage?.holdsHead ?? true { held.append("ln_f + head") }
            let memory = try ZeROMemoryPlan(parameterCount: parameters, dataParallelSize: mesh.dp, stage: plan.settings.zeroStage, optimizer: optimizer)
            return Rank(rank: rank, coordinates: mesh.axes.map { ($0, mesh.coordinate(of: rank, along: $0)) },
                        layers: held.joined(separator: ", "), parameters: parameters, bytes: memory.totalBytes)
        }
    }

    /// The report for people.
    func table() -> String {
        let mesh = plan.mesh
        var lines: [String] = []
        lines.append("mesh: " + zip(mesh.axes, mesh.sizes).map { "\($0) \($1)" }.joined(separator: " × ") + " = \(mesh.size) ranks (order \(mesh.orderDescription), fastest-varying first)")
        lines.append("features:" + (plan.features.isEmpty ? " none (one rank)" : ""))
        for feature in plan.features.sorted() {
            let note: String
            switch CompositionRules.rule(for: [feature])?.verdict {
            case .allowed(let text)?, .conditional(let text)?: note = " — " + text
            default: note = ""
            }
            lines.append("  \(feature.rawValue): \(feature.meaning)\(note)")
        }
        lines.append("groups:")
        for axis in mesh.axes {
            lines.append("  \(axis): " + mesh.groups(along: axis).map { "[" + $0.map(String.init).joined(separator: ",") + "]" }.joined(separator: " "))
        }
        let axisHeader = mesh.axes.map { $0.rawValue.padding(toLength: 3, withPad: " ", startingAt: 0) }.joined(separator: " ")
        lines.append("rank  \(axisHeader)  layers                              parameters    bytes (parameters + gradients + optimizer state, ZeRO stage \(plan.settings.zeroStage))")
        for rank in ranks {
            let positions = rank.coordinates.map { String($0.position).padding(toLength: 3, withPad: " ", startingAt: 0) }.joined(separator: " ")
            lines.append(String(format: "%4d  ", rank.rank) + positions + "  " + rank.layers.padding(toLength: max(34, rank.layers.count), withPad: " ", startingAt: 0)
                + "  " + PlanCommand.grouped(rank.parameters).padding(toLength: 12, withPad: " ", startingAt: 0) + "  " + PlanCommand.bytes(rank.bytes))
        }
        return lines.joined(separator: "\n")
    }

    /// The report as one JSON object.
    func json() -> String {
        let mesh = plan.mesh
        let object: [String: Any] = [
            "mesh": ["order": mesh.orderDescription, "world": mesh.size,
                     "sizes": Dictionary(uniqueKeysWithValues: zip(mesh.axes.map(\.rawValue), mesh.sizes))],
            "features": plan.features.sorted().map(\.rawValue),
            "zero_stage": plan.settings.zeroStage,
            "groups": Dictionary(uniqueKeysWithValues: mesh.axes.map { ($0.rawValue, mesh.groups(along: $0)) }),
            "ranks": ranks.map { rank -> [String: Any] in
                ["rank": rank.rank, "layers": rank.layers, "parameters": rank.parameters, "bytes": rank.bytes,
                 "coordinates": Dictionary(uniqueKeysWithValues: rank.coordinates.map { ($0.axis.rawValue, $0.position) })]
            },
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
