// The agent's `bgp:` section: every key, defaults, and refusals naming the file, line,
// field and value.
import Foundation
import SluiceAgent
import SluiceCore
import Testing

@Suite("agent: bgp configuration")
struct BGPConfigTests {
    @Test("defaults, every key, and per-VIP attributes over the global ones")
    func everyKey() throws {
        let defaults = try #require(try AgentConfig.parse("token_file: /t\nbgp: {}\n", file: "a.yaml").bgp)
        #expect(defaults == BGPConfig())
        #expect(defaults.birdSocket == "/run/bird/bird.ctl" && defaults.includeFile == "/var/lib/sluice/bird-vips.conf")
        #expect(defaults.announceWhen == .anyServiceUp && defaults.drainTimeoutMilliseconds == 30_000)
        #expect(defaults.drainQuietMilliseconds == 2_000 && defaults.shutdownGraceMilliseconds == 10_000)
        #expect(try AgentConfig.parse("token_file: /t\n", file: "a.yaml").bgp == nil)

        let bgp = try #require(try AgentConfig.parse("""
            token_file: /t
            bgp:
              bird_socket: /run/b.ctl
              include_file: /etc/bird/sluice.conf
              communities: ["65100:100", "65100:7"]
              med: 10
              local_pref: 200
              announce_when: all_services_up
              drain_timeout: 1m
              drain_quiet: 500ms
              shutdown_grace: 0s
              vips:
                - { vip: 198.51.100.10, med: 50 }
                - vip: "2001:db8::10"
                  communities: []
                  local_pref: 50
            """, file: "a.yaml").bgp)
        #expect(bgp.birdSocket == "/run/b.ctl" && bgp.includeFile == "/etc/bird/sluice.conf")
        #expect(bgp.attributes.communities.map(\.description) == ["65100:100", "65100:7"])
        #expect(bgp.attributes.med == 10 && bgp.attributes.localPref == 200)
        #expect(bgp.announceWhen == .allServicesUp && bgp.drainTimeoutMilliseconds == 60_000)
        #expect(bgp.drainQuietMilliseconds == 500 && bgp.shutdownGraceMilliseconds == 0)
        let first = bgp.attributes(for: IPAddress("198.51.100.10")!)
        #expect(first.med == 50 && first.localPref == 200 && first.communities == bgp.attributes.communities)
        let second = bgp.attributes(for: IPAddress("2001:db8::10")!)
        #expect(second.med == 10 && second.localPref == 50 && second.communities.isEmpty)
        #expect(bgp.attributes(for: IPAddress("198.51.100.99")!) == bgp.attributes)
    }

    static let bad: [BadAgentConfig] = [
        BadAgentConfig(label: "an unknown key in bgp",
                       text: "token_file: /t\nbgp:\n  socket: /x\n", line: 3, field: "bgp",
                       message: "unknown key \"socket\" (allowed keys: bird_socket, include_file, communities, med, local_pref, announce_when, drain_timeout, drain_quiet, shutdown_grace, vips)"),
        BadAgentConfig(label: "a community that is not ASN:VALUE",
                       text: "token_file: /t\nbgp:\n  communities: [\"65100:1\", \"65100:70000\"]\n", line: 3, field: "bgp.communities[1]",
                       message: "\"65100:70000\" is not a BGP community ASN:VALUE, each 0-65535 (e.g. \"65100:100\")"),
        BadAgentConfig(label: "a MED that is not a number",
                       text: "token_file: /t\nbgp:\n  med: low\n", line: 3, field: "bgp.med",
                       message: "\"low\" is not a whole number from 0 to 4294967295"),
        BadAgentConfig(label: "an unknown announce_when",
                       text: "token_file: /t\nbgp:\n  announce_when: always\n", line: 3, field: "bgp.announce_when",
                       message: "\"always\" is not one of any_service_up, all_services_up"),
        BadAgentConfig(label: "a drain_quiet too short",
                       text: "token_file: /t\nbgp:\n  drain_quiet: 10ms\n", line: 3, field: "bgp.drain_quiet",
                       message: "\"10ms\" is not a duration from 100ms to 10m (e.g. 2s, 30s)"),
        BadAgentConfig(label: "a per-VIP entry that is not an address",
                       text: "token_file: /t\nbgp:\n  vips:\n    - { vip: web, med: 5 }\n", line: 4, field: "bgp.vips[0].vip",
                       message: "\"web\" is not an IP address"),
        BadAgentConfig(label: "a VIP listed twice",
                       text: "token_file: /t\nbgp:\n  vips:\n    - { vip: 10.0.0.1, med: 5 }\n    - { vip: 10.0.0.1, med: 6 }\n",
                       line: 5, field: "bgp.vips[1].vip", message: "10.0.0.1 is listed twice"),
        BadAgentConfig(label: "a per-VIP entry without its vip",
                       text: "token_file: /t\nbgp:\n  vips:\n    - { med: 5 }\n", line: 4, field: "bgp.vips[0].vip",
                       message: "required key is missing"),
        BadAgentConfig(label: "an empty include_file",
                       text: "token_file: /t\nbgp:\n  include_file: \"\"\n", line: 3, field: "bgp.include_file",
                       message: "must be a non-empty string, found the value \"\""),
    ]

    @Test("a bad bgp section is refused with the file, the line, the field and the value", arguments: bad)
    func refused(_ bad: BadAgentConfig) {
        bad.expectRefused()
    }
}
