# Sluice: builds the BPF data plane (clang) and the Swift control plane (SwiftPM).
#   make          install missing Debian packages, build everything (release lbctl)
#   make demo     real TCP and UDP through a balancer in a namespace lab (root)
#   make test     every test: pure Swift, BPF_PROG_TEST_RUN, CLI, veth and lab tests (root)
#   make fuzz     the fuzz suites at full size (root)
#   make bench    the performance table (release build), also as JSON under bench/results/
#   make install  lbctl, its systemd units, completions, man page and an example /etc/sluice
#                 (DESTDIR, PREFIX, SBINDIR, UNITDIR, SYSCONFDIR)
#   make deb      the same as a Debian package, build/deb/sluice_VERSION_ARCH.deb (DEB_OUT)

SHELL := /bin/bash
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
MAN_DIR := .build/man
SWIFT ?= swift
# Debian's clang 14 from apt; named explicitly because the Swift toolchain's clang may come first in PATH.
BPF_CLANG ?= /usr/bin/clang
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -mcpu=v3 \
	-I/usr/include/$(shell uname -m)-linux-gnu -Ibpf
APT_PACKAGES := dpkg-dev lintian libbpf-dev libelf-dev zlib1g-dev clang llvm bpftool iproute2 pkg-config xxd ethtool \
	python3 python3-venv iputils-ping util-linux systemd prometheus openssl curl tcpdump tshark nginx haproxy nftables bird2
# The API fuzzer the tests run against a real agent: from PyPI (Debian has none), pinned, in a venv of its own.
SCHEMATHESIS_VERSION := 4.32.5
SCHEMATHESIS_VENV := .build/tools/schemathesis

# The package's version is lbctl's (lbctl --version), read from its one definition; the latest
# entry of contrib/debian/changelog must name it (make deb-files checks).
VERSION := $(shell sed -n 's/^ *public static let version = "\(.*\)"$$/\1/p' Sources/SluiceAgent/AgentController.swift)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_OUT ?= build/deb
DEB = $(DEB_OUT)/sluice_$(VERSION)_$(DEB_ARCH).deb
DEB_STAGE = $(DEB_OUT)/stage
# TOKEN=no: install-files makes no /etc/sluice/token (the package's postinst makes one per install).
TOKEN ?= yes

BPF_HEADERS := $(wildcard bpf/*.h)
BPF_OBJECTS := bpf/build/lb.bpf.o bpf/build/decap.bpf.o
# Floors, the restore-and-tail-call wrapper, the live generator and sink: read from disk by sluice-bench, never shipped.
BENCH_OBJECT := bpf/build/bench.bpf.o bpf/build/bench_live.bpf.o
# Included by Sources/CSluice/objects.c (not compiled on its own); not in git.
EMBEDDED := Sources/CSluice/generated_objects.inc
# What EMBEDDED was called before objects.c: a stale copy would be compiled too (duplicate symbols).
OLD_EMBEDDED := Sources/CSluice/generated_objects.c

.PHONY: all deps bpf build release demo test fuzz bench install install-files deb deb-files man clean schemathesis

all: deps release

# Installs what is missing (nothing on a machine that has it all).
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		if echo " $$missing " | grep -q " bird2 " && [ -d /run/systemd/system ]; then \
			echo "stopping the packaged bird service: the lab and the tests run BIRDs of their own, in namespaces"; \
			systemctl disable --now bird >/dev/null 2>&1 || true; \
		fi; \
	fi

bpf/build/%.bpf.o: bpf/%.bpf.c $(BPF_HEADERS)
	@mkdir -p bpf/build
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

$(EMBEDDED): $(BPF_OBJECTS) scripts/embed-objects.sh
	@rm -f $(OLD_EMBEDDED)
	scripts/embed-objects.sh $@ balancer=bpf/build/lb.bpf.o decap=bpf/build/decap.bpf.o

bpf: deps $(EMBEDDED) $(BENCH_OBJECT)

build: bpf
	$(SWIFT) build

release: bpf
	$(SWIFT) build -c release
	@echo "lbctl: $$($(SWIFT) build -c release --show-bin-path)/lbctl"

demo: build
	python3 scripts/demo.py

test: build schemathesis
	$(SWIFT) test

# The fuzz suites at full size (make test runs them smaller): 1,000,000 frames through the balancer (its
# tunnelling modes, and its translating ones: FrameFuzzTests matches NATFrameFuzzTests too) and the decapsulator, 100,000 documents per parser, 1,000 service files through lbctl apply, 200 schemathesis
# examples an operation. SLUICE_FUZZ_SEED=N replays a run.
fuzz: build schemathesis
	SLUICE_FUZZ_FRAMES=1000000 SLUICE_FUZZ_DOCUMENTS=100000 SLUICE_FUZZ_APPLIES=1000 SLUICE_FUZZ_EXAMPLES=200 \
		$(SWIFT) test --filter 'FrameFuzzTests|ServiceFileFuzzTests|AgentConfigFuzzTests|OpenAPITests'

schemathesis: deps
	@if ! $(SCHEMATHESIS_VENV)/bin/schemathesis --version 2>/dev/null | grep -q "$(SCHEMATHESIS_VERSION)"; then \
		echo "installing schemathesis $(SCHEMATHESIS_VERSION) into $(SCHEMATHESIS_VENV)"; \
		rm -rf $(SCHEMATHESIS_VENV) && python3 -m venv $(SCHEMATHESIS_VENV) && \
		$(SCHEMATHESIS_VENV)/bin/pip install -q --disable-pip-version-check "schemathesis==$(SCHEMATHESIS_VERSION)"; \
	fi

bench: bpf
	$(SWIFT) build -c release
	"$$($(SWIFT) build -c release --show-bin-path)/sluice-bench" --objects bpf/build --out bench/results $(BENCH_ARGS)

install: release
	$(MAKE) install-files LBCTL="$$($(SWIFT) build -c release --show-bin-path)/lbctl"

# What `make install` puts under $(DESTDIR)$(PREFIX) and $(DESTDIR)$(SYSCONFDIR), from the
# lbctl named by LBCTL (the tests install their debug build into a scratch root this way).
# An existing /etc/sluice file is kept; a missing token is made with openssl.
install-files:
	@test -x "$(LBCTL)" || { echo "install-files: LBCTL=$(LBCTL) is not an executable (make install builds one)"; exit 2; }
	install -D -m 0755 "$(LBCTL)" "$(DESTDIR)$(SBINDIR)/lbctl"
	@for unit in contrib/systemd/*.service; do \
		mkdir -p "$(DESTDIR)$(UNITDIR)"; \
		sed 's|@SBINDIR@|$(SBINDIR)|g' "$$unit" > "$(DESTDIR)$(UNITDIR)/$${unit##*/}" && chmod 0644 "$(DESTDIR)$(UNITDIR)/$${unit##*/}"; \
	done
	mkdir -p "$(DESTDIR)$(DATADIR)/bash-completion/completions" "$(DESTDIR)$(DATADIR)/zsh/vendor-completions" \
		"$(DESTDIR)$(DATADIR)/fish/vendor_completions.d"
	"$(LBCTL)" --generate-completion-script bash > "$(DESTDIR)$(DATADIR)/bash-completion/completions/lbctl"
	"$(LBCTL)" --generate-completion-script zsh > "$(DESTDIR)$(DATADIR)/zsh/vendor-completions/_lbctl"
	"$(LBCTL)" --generate-completion-script fish > "$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/lbctl.fish"
	install -D -m 0644 docs/lbctl.8 "$(DESTDIR)$(MANDIR)/man8/lbctl.8"
	@for file in agent.yaml services.yaml; do \
		target="$(DESTDIR)$(SYSCONFDIR)/sluice/$$file"; \
		[ -e "$$target" ] || install -D -m 0644 "contrib/etc/sluice/$$file" "$$target"; \
	done
	@token="$(DESTDIR)$(SYSCONFDIR)/sluice/token"; \
	[ "$(TOKEN)" = no ] || [ -e "$$token" ] || { (umask 077; openssl rand -hex 32 > "$$token") && echo "made $$token"; }

# The Swift runtime and Foundation linked into lbctl (--static-swift-stdlib), so the package needs
# no toolchain; in a build directory of its own, as the flag recompiles modules that other builds
# share (and they then fail to link). DEB_BUILD=debug (CI) builds it unoptimised: a package to lint
# and install in half the time, not one to ship. The binary packaged is kept as $(DEB_OUT)/lbctl.
DEB_BUILD ?= release
SWIFT_DEB := $(SWIFT) build -c $(DEB_BUILD) --static-swift-stdlib --scratch-path .build/deb --product lbctl

deb: bpf
	$(SWIFT_DEB)
	install -D -m 0755 "$$($(SWIFT_DEB) --show-bin-path)/lbctl" "$(DEB_OUT)/lbctl"
	$(MAKE) --no-print-directory deb-files LBCTL="$(DEB_OUT)/lbctl"

# The Debian package of the lbctl named by LBCTL (which must not need the toolchain's Swift
# runtime: make deb builds it with --static-swift-stdlib), as $(DEB): install-files with
# PREFIX=/usr into $(DEB_STAGE) without the token (contrib/debian/postinst makes one per
# install), the binary stripped, the man page and changelog gzipped, Depends from
# dpkg-shlibdeps, then dpkg-deb. DebPackageTests lint it and install it into a scratch root.
deb-files:
	@test -x "$(LBCTL)" || { echo "deb-files: LBCTL=$(LBCTL) is not an executable (make deb builds one)"; exit 2; }
	@test -n "$(VERSION)" || { echo "deb-files: no version in Sources/SluiceAgent/AgentController.swift"; exit 2; }
	@changelog=$$(dpkg-parsechangelog -l contrib/debian/changelog -S Version); [ "$$changelog" = "$(VERSION)" ] || \
		{ echo "deb-files: contrib/debian/changelog's latest entry is $$changelog, lbctl is $(VERSION): add an entry"; exit 2; }
	@! ldd "$(LBCTL)" | grep -q 'libswiftCore\.so' || \
		{ echo "deb-files: $(LBCTL) links the Swift runtime from the toolchain: build it with --static-swift-stdlib (make deb does)"; exit 2; }
	rm -rf "$(DEB_STAGE)" "$(DEB)"
	$(MAKE) --no-print-directory install-files LBCTL="$(LBCTL)" DESTDIR="$(DEB_STAGE)" PREFIX=/usr SYSCONFDIR=/etc TOKEN=no
	strip --strip-unneeded --remove-section=.comment --remove-section=.note "$(DEB_STAGE)/usr/sbin/lbctl"
	gzip -9n "$(DEB_STAGE)/usr/share/man/man8/lbctl.8"
	@# bash-completion sources the file: its #!/bin/bash line is noise (lintian says so).
	sed -i '1{/^#!/d}' "$(DEB_STAGE)/usr/share/bash-completion/completions/lbctl"
	install -D -m 0644 contrib/debian/lintian-overrides "$(DEB_STAGE)/usr/share/lintian/overrides/sluice"
	install -D -m 0644 contrib/debian/copyright "$(DEB_STAGE)/usr/share/doc/sluice/copyright"
	gzip -9n < contrib/debian/changelog > "$(DEB_STAGE)/usr/share/doc/sluice/changelog.gz"
	mkdir -p "$(DEB_STAGE)/DEBIAN" "$(DEB_OUT)/shlibdeps/debian"
	install -m 0755 contrib/debian/postinst contrib/debian/postrm "$(DEB_STAGE)/DEBIAN/"
	install -m 0644 contrib/debian/conffiles "$(DEB_STAGE)/DEBIAN/"
	find "$(DEB_STAGE)" -type d -exec chmod 0755 {} + && find "$(DEB_STAGE)" -type f -exec chmod 0644 {} + && \
		chmod 0755 "$(DEB_STAGE)/usr/sbin/lbctl" "$(DEB_STAGE)/DEBIAN/postinst" "$(DEB_STAGE)/DEBIAN/postrm"
	cd "$(DEB_STAGE)" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum > DEBIAN/md5sums
	@# dpkg-shlibdeps reads debian/control for the names of the packages being built.
	printf 'Source: sluice\n\nPackage: sluice\nArchitecture: any\n' > "$(DEB_OUT)/shlibdeps/debian/control"
	@depends=$$(cd "$(DEB_OUT)/shlibdeps" && dpkg-shlibdeps -O "$(abspath $(DEB_STAGE))/usr/sbin/lbctl" | sed -n 's/^shlibs:Depends=//p'); \
	test -n "$$depends" || { echo "deb-files: dpkg-shlibdeps found no dependencies"; exit 2; }; \
	size=$$(du -s -k --apparent-size --exclude=DEBIAN "$(DEB_STAGE)" | cut -f1); \
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e "s|@DEPENDS@|$$depends|" -e "s|@INSTALLED_SIZE@|$$size|" \
		-e "s|@MAINTAINER@|$$(dpkg-parsechangelog -l contrib/debian/changelog -S Maintainer)|" \
		contrib/debian/control.in > "$(DEB_STAGE)/DEBIAN/control"
	rm -rf "$(DEB_OUT)/shlibdeps"
	dpkg-deb --root-owner-group -Zxz --build "$(DEB_STAGE)" "$(DEB)"

# The man page, generated from lbctl's argument parser by swift-argument-parser's
# generate-manual tool run on the debug lbctl (the package plugin would rebuild every
# product), and kept in git so that an install needs no Swift build tools. After a change of
# lbctl's commands or options run `make man` and commit docs/lbctl.8 (InstallTests fails on
# a page that misses one).
man: build
	@mkdir -p $(MAN_DIR)
	$(SWIFT) build --product generate-manual
	"$$($(SWIFT) build --show-bin-path)/generate-manual" "$$($(SWIFT) build --show-bin-path)/lbctl" \
		--section 8 --authors "The Sluice authors" --output-directory $(MAN_DIR)
	cp $(MAN_DIR)/lbctl.8 docs/lbctl.8

clean:
	rm -rf bpf/build $(EMBEDDED) $(OLD_EMBEDDED) .build build/deb
