// selfCheck(): does the model on this device compute what PyTorch computed? The same check as
// `python runtime/run_inference.py ARTIFACT --self-check` (export/test_vectors.py), on the tensor tolerance:
// run the bundled input triplets, compare with PyTorch's outputs, name the worst output when out of tolerance.
import Foundation

struct PBRSelfCheckReport {
    struct Figures { let maxAbs: Double; let psnrDB: Double }
    let figures: [String: Figures]
    let failure: String?  // nil: within tolerance
}

extension PBRPredictor {
    /// - Parameters:
    ///   - folder: the `OUTPUT.testvectors` folder, bundled beside the model (the contract names it).
    ///   - artifactName: the file name its tolerance is listed under, e.g. "student.mlpackage".
    func selfCheck(vectors folder: URL, artifactName: String) async throws -> PBRSelfCheckReport {
        let meta = try JSONDecoder().decode(PBRTestVectors.self,
                                            from: Data(contentsOf: folder.appendingPathComponent("tolerances.json")))
        guard meta.version == 1, meta.imageSize == contract.imageSize, meta.outputNames == contract.outputNames else {
            throw PBRError.badInput("\(folder.lastPathComponent) does not match this model's contract")
        }
        guard let tensor = meta.artifacts[artifactName]?.tensor else {
            throw PBRError.badInput("\(folder.lastPathComponent) has no tensor tolerance for \(artifactName)")
        }
        let expected = try SafeTensors(contentsOf: folder.appendingPathComponent(meta.expected))
        var outputs: [String: [Float]] = [:]  // per name, samples one after another, (N, C, S, S) like expected
        for names in meta.inputs {
            let views = try names.map { try PBRView(contentsOf: folder.appendingPathComponent($0)) }
            let maps = try await predictRaw(views: views)
            for name in contract.outputNames { outputs[name, default: []] += maps[name]!.flatMap { $0 } }
        }
        var figures: [String: PBRSelfCheckReport.Figures] = [:]
        for name in contract.outputNames {
            let (ref, shape) = try expected.floats(name)
            let got = outputs[name]!
            guard shape.first == meta.inputs.count, ref.count == got.count else {
                throw PBRError.badInput("expected \(name) has shape \(shape), the model gave \(got.count) values")
            }
            figures[name] = Self.figures(ref, got)
        }
        // NaN never passes: every comparison with NaN is false
        let within: (PBRSelfCheckReport.Figures) -> Bool = tensor.figure == "max_abs"
            ? { $0.maxAbs <= tensor.limit } : { $0.psnrDB >= tensor.limit }
        let worst = contract.outputNames.min { (figures[$0]!.psnrDB.isNaN ? -.infinity : figures[$0]!.psnrDB) <
                                               (figures[$1]!.psnrDB.isNaN ? -.infinity : figures[$1]!.psnrDB) }!
        let failed = contract.outputNames.contains { !within(figures[$0]!) }
        let f = figures[worst]!
        return PBRSelfCheckReport(
            figures: figures,
            failure: failed ? "self-check failed for \(artifactName): \(tensor.figure) outside \(tensor.limit); worst output "
                + "\(worst) (max abs \(f.maxAbs), PSNR \(f.psnrDB) dB)" : nil)
    }

    /// max |ref - got| and PSNR with the reference's peak-to-peak range as signal (export/parity.py's psnr).
    private static func figures(_ ref: [Float], _ got: [Float]) -> PBRSelfCheckReport.Figures {
        var maxAbs = 0.0, squares = 0.0, lo = Double.infinity, hi = -Double.infinity
        for (r, g) in zip(ref, got) {
            guard r.isFinite, g.isFinite else { return .init(maxAbs: .nan, psnrDB: .nan) }
            let d = Double(r) - Double(g)
            maxAbs = max(maxAbs, abs(d)); squares += d * d
            lo = min(lo, Double(r)); hi = max(hi, Double(r))
        }
        let mse = squares / Double(ref.count), peak = hi > lo ? hi - lo : 1
        return .init(maxAbs: maxAbs, psnrDB: mse == 0 ? 200 : min(200, 10 * log10(peak * peak / mse)))
    }
}
