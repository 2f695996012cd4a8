// `make deb-files` on make deb's lbctl: the Debian package make deb builds. lintian finds
// nothing to say; dpkg installs it into a scratch root (its own admin directory, the
// maintainer scripts run chrootless with DPKG_ROOT), where lbctl runs and every piece of
// make install is, the example configuration registered as conffiles and the token made by
// postinst (never shipped in the package); then dpkg removes and purges it again.
import Foundation
import SluiceTestSupport
import Testing

/// The lbctl packaged: make deb's (--static-swift-stdlib); the debug build under test links
/// the toolchain's Swift runtime, which make deb-files refuses to package.
private let debLbctl = ProcessInfo.processInfo.environment["SLUICE_DEB_LBCTL"]
    ?? Lbctl.packageRoot.appendingPathComponent("build/deb/lbctl").path

@Suite("make deb: the Debian package, linted and installed into a scratch root",
       .enabled(if: getuid() == 0, "needs root: dpkg installs as root, with root-owned files"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: debLbctl),
                "needs an lbctl with the Swift runtime linked in: make deb (or SLUICE_DEB_LBCTL=FILE)"))
struct DebPackageTests {
    static let lbctl = debLbctl

    static let files = ["usr/sbin/lbctl", "usr/lib/systemd/system/sluice-agent.service",
                        "usr/lib/systemd/system/sluice-attach@.service",
                        "usr/share/bash-completion/completions/lbctl", "usr/share/zsh/vendor-completions/_lbctl",
                        "usr/share/fish/vendor_completions.d/lbctl.fish", "usr/share/man/man8/lbctl.8.gz",
                        "usr/share/doc/sluice/copyright", "usr/share/doc/sluice/changelog.gz",
                        "etc/sluice/agent.yaml", "etc/sluice/services.yaml"]

    /// dpkg on the scratch root `root` (the maintainer scripts run outside it, with DPKG_ROOT set;
    /// its dependencies, libbpf and the rest, are the host's, not the root's).
    static func dpkg(_ root: String, _ arguments: [String]) async throws -> CommandResult {
        try await Command.run("/usr/bin/dpkg", ["--root=\(root)", "--log=\(root)/var/log/dpkg.log",
                                                "--force-script-chrootless", "--force-depends"] + arguments)
    }

    static func mode(_ path: String) throws -> Int {
        try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int ?? -1
    }

    @Test("make deb-files builds sluice_VERSION_ARCH.deb; lintian is silent; dpkg installs, registers the conffiles, postinst makes the token; remove and purge")
    func builtLintedInstalled() async throws {
        let scratch = try ScratchDirectory()
        let out = scratch.path + "/out"
        let make = try await Command.run("/usr/bin/make", [
            "-C", Lbctl.packageRoot.path, "--no-print-directory", "deb-files", "LBCTL=\(Self.lbctl)", "DEB_OUT=\(out)"])
        try #require(make.status == 0, "make deb-files:\n\(make)")

        let version = try await Command.run(Self.lbctl, ["--version"])
        try #require(version.status == 0, "\(version)")
        let arch = try await Command.run("/usr/bin/dpkg", ["--print-architecture"])
        let deb = "\(out)/sluice_\(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines))_\(arch.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).deb"
        try #require(FileManager.default.fileExists(atPath: deb), "no \(deb): \(make.stdout)")

        // The control file: lbctl's version, and Depends from the binary's own libraries (libbpf,
        // libelf, zlib through libbpf's, glibc), never the toolchain's Swift runtime.
        let info = try await Command.run("/usr/bin/dpkg-deb", ["-f", deb, "Package", "Version", "Depends", "Section", "Maintainer"])
        try #require(info.status == 0, "\(info)")
        #expect(info.stdout.contains("Package: sluice\n") && info.stdout.contains("Section: net\n"), "\(info.stdout)")
        #expect(info.stdout.contains("Version: \(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines))\n"), "\(info.stdout)")
        let depends = info.stdout.split(separator: "\n").first { $0.hasPrefix("Depends: ") } ?? ""
        for library in ["libbpf1", "libc6"] { #expect(depends.contains(library), "Depends lacks \(library): \(depends)") }
        #expect(!depends.lowercased().contains("swift"), "\(depends)")

        // What the package holds: make install's pieces, and no token (every install makes its own).
        let contents = try await Command.run("/usr/bin/dpkg-deb", ["-c", deb])
        try #require(contents.status == 0, "\(contents)")
        for file in Self.files { #expect(contents.stdout.contains(" ./\(file)\n"), "the package lacks \(file)") }
        #expect(!contents.stdout.contains("etc/sluice/token"), "the package ships a token:\n\(contents.stdout)")
        #expect(!contents.stdout.contains("/usr/local/") && contents.stdout.contains("root/root"), "\(contents.stdout)")

        // No error, warning (or any other tag lintian shows by default); lintian exits 0.
        let lintian = try await Command.run("/usr/bin/lintian", ["--fail-on", "error,warning", deb])
        let tags = lintian.stdout.split(separator: "\n").filter { !$0.hasPrefix("N:") }
        #expect(lintian.status == 0 && tags.isEmpty, "lintian \(deb):\n\(lintian)")

        // dpkg's admin directory in the scratch root, as on a fresh system.
        let root = scratch.path + "/root"
        for directory in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        #expect(FileManager.default.createFile(atPath: root + "/var/lib/dpkg/status", contents: Data()))
        let install = try await Self.dpkg(root, ["--install", deb])
        try #require(install.status == 0, "dpkg --install:\n\(install)")

        for file in Self.files { #expect(FileManager.default.fileExists(atPath: root + "/" + file), "\(file) was not installed") }
        let help = try await Command.run(root + "/usr/sbin/lbctl", ["--help"])
        #expect(help.status == 0 && help.stdout.contains("attach"), "the installed lbctl: \(help)")
        #expect(try Self.mode(root + "/usr/sbin/lbctl") == 0o755)
        let unit = try String(contentsOfFile: root + "/usr/lib/systemd/system/sluice-agent.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/sbin/lbctl agent "), "the unit names the packaged lbctl:\n\(unit)")

        let tokenPath = root + "/etc/sluice/token"
        let token = try String(contentsOfFile: tokenPath, encoding: .utf8)
        #expect(token.count == 65 && token.dropLast().allSatisfy(\.isHexDigit) && token.hasSuffix("\n"),
                "postinst's token: 32 bytes in hex and a newline: \(token.debugDescription)")
        let tokenMode = try Self.mode(tokenPath)
        #expect(tokenMode == 0o600, "the token is root's only: \(String(tokenMode, radix: 8))")

        let query = try await Command.run("/usr/bin/dpkg-query", ["--admindir=\(root)/var/lib/dpkg", "-W",
                                                                  "-f=${Status}\n${Conffiles}\n", "sluice"])
        #expect(query.status == 0 && query.stdout.hasPrefix("install ok installed\n"), "\(query)")
        for conffile in ["/etc/sluice/agent.yaml", "/etc/sluice/services.yaml"] {
            #expect(query.stdout.contains(" \(conffile) "), "\(conffile) is not a conffile: \(query.stdout)")
        }
        #expect(!query.stdout.contains("token"), "\(query.stdout)")

        // A second install (an upgrade to the same version) keeps the token postinst made.
        let again = try await Self.dpkg(root, ["--install", deb])
        #expect(again.status == 0, "dpkg --install again:\n\(again)")
        #expect(try String(contentsOfFile: tokenPath, encoding: .utf8) == token, "reinstalling replaced the token")

        // Remove: the program goes, the configuration stays; purge: that goes too.
        let remove = try await Self.dpkg(root, ["--remove", "sluice"])
        #expect(remove.status == 0, "dpkg --remove:\n\(remove)")
        #expect(!FileManager.default.fileExists(atPath: root + "/usr/sbin/lbctl"), "lbctl is still installed after --remove")
        #expect(FileManager.default.fileExists(atPath: root + "/etc/sluice/agent.yaml")
                && FileManager.default.fileExists(atPath: tokenPath), "--remove took the configuration")
        let purge = try await Self.dpkg(root, ["--purge", "sluice"])
        #expect(purge.status == 0, "dpkg --purge:\n\(purge)")
        #expect(!FileManager.default.fileExists(atPath: root + "/etc/sluice"), "/etc/sluice survives --purge")
    }
}
