import Foundation

/// The library Convoy's GEMMs run on (see ``BLAS``).
///
/// Both libraries are linked, and the choice is made at run time: SwiftPM has no optional dependencies, so
/// a build-time switch would mean two package manifests, and loading oneDNN with `dlopen` would give up the
/// type-checked C API. `scripts/install-dependencies` installs both. oneDNN is the default because it
/// uses AVX-512 and AVX512-BF16 where the CPU has them (2× OpenBLAS's fp32 rate on Zen 5) and detects the
/// CPU itself; OpenBLAS is the fallback, chosen with `CONVOY_GEMM=openblas`.
public enum GEMMLibrary: String, Sendable, CaseIterable {
    /// OpenBLAS's `cblas_sgemm`; bf16 GEMMs widen their operands to fp32 first.
    case openBLAS = "openblas"
    /// oneDNN: `dnnl_sgemm` for fp32, the matmul primitive for bf16.
    case oneDNN = "onednn"

    /// The environment variable that overrides the default library.
    public static let environmentVariable = "CONVOY_GEMM"

    /// The library named by `CONVOY_GEMM`, or oneDNN when it is unset or empty.
    ///
    /// - Throws: ``ConvoyError/invalidConfiguration(_:)`` when `CONVOY_GEMM` names no library.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GEMMLibrary {
        guard let text = environment[environmentVariable], !text.isEmpty else { return .oneDNN }
        guard let library = GEMMLibrary(rawValue: text.lowercased()) else {
            let names = allCases.map(\.rawValue).joined(separator: " or ")
            throw ConvoyError.invalidConfiguration("\(environmentVariable)=\(text) names no GEMM library: set it to \(names), or unset it for the default (onednn)")
        }
        return library
    }

    /// The library GEMMs use unless a caller names one: read once from the environment; OpenBLAS when
    /// oneDNN cannot create its CPU engine.
    public static let active: GEMMLibrary = {
        let requested: GEMMLibrary
        do { requested = try fromEnvironment() } catch { preconditionFailure("\(error)") }
        return requested == .oneDNN && !OneDNN.isAvailable ? .openBLAS : requested
    }()

    /// The library's name as people write it.
    public var name: String {
        switch self {
        case .openBLAS: return "OpenBLAS"
        case .oneDNN: return "oneDNN"
        }
    }

    /// The library's version.
    public var version: String {
        switch self {
        case .openBLAS: return OpenBLAS.version
        case .oneDNN: return OneDNN.version
        }
    }

    /// The instruction set the library's fp32 kernels use on this CPU (OpenBLAS: the core it selected).
    public var isa: String {
        switch self {
        case .openBLAS: return OpenBLAS.coreName
        case .oneDNN: return OneDNN.isa
        }
    }

    /// The kernel a bf16 GEMM of a typical size runs (oneDNN's implementation name, e.g.
    /// `brg:avx512_core_bf16`; OpenBLAS widens to fp32 and runs sgemm).
    public var bf16Kernel: String {
        switch self {
        case .openBLAS: return "fp32 sgemm on widened operands"
        case .oneDNN: return OneDNN.bf16Implementation
        }
    }
}
