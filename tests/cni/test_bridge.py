"""Real CNI plugins (bridge, host-local, portmap from /usr/lib/cni) driven by
CniManager, in a private host namespace per test (see conftest)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pyctr.daemon.errors import FailedPrecondition
from pyctr.daemon.pods import netns
from pyctr.daemon.pods.cni import CniPluginError, PortMapping
from tests.cni.conftest import CniEnv, addresses, ping, veths

pytestmark = pytest.mark.root

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cni" / "10-pyctr-bridge.conflist"


async def test_two_pods_get_ips_ping_each_other_and_teardown_releases_all(
    cni_env: CniEnv,
) -> None:
    cni_env.write_conflist()
    m = cni_env.manager()
    assert m.status()[0]
    a, b = cni_env.new_pod_ns("a"), cni_env.new_pod_ns("b")
    net_a, net_b = await asyncio.gather(
        m.setup("poda", str(a), namespace="default", name="a", uid="uid-a"),
        m.setup("podb", str(b), namespace="default", name="b", uid="uid-b"),
    )
    assert net_a.interface == net_b.interface == "eth0"
    assert len(net_a.ips) == len(net_b.ips) == 1
    ip_a, ip_b = net_a.ips[0], net_b.ips[0]
    assert ip_a != ip_b
    for ip in (ip_a, ip_b):
        assert ipaddress.ip_address(ip) in cni_env.subnet
        assert ip != cni_env.gateway
    # The result is what the pod really has.
    assert addresses(a) == [ip_a] and addresses(b) == [ip_b]
    assert sorted(cni_env.reservations()) == sorted([ip_a, ip_b])
    assert len(veths()) == 2
    assert m.pod_network("poda") == net_a  # from the cache, as after a restart
    assert m.cached_pods() == ["poda", "podb"]

    for src, dst in ((a, ip_b), (b, ip_a), (a, cni_env.gateway)):
        r = ping(src, dst)
        assert r.returncode == 0, r.stdout + r.stderr

    await m.teardown("poda", str(a))
    await m.teardown("podb", str(b))
    assert cni_env.reservations() == []
    assert veths() == []
    assert addresses(a) == []  # eth0 gone from the pod too
    assert m.cached_pods() == []
    assert ping(b, ip_a).returncode != 0
    # DEL twice is fine.
    await m.teardown("poda", str(a))
    await m.teardown("podb")


async def test_teardown_after_the_netns_is_gone(cni_env: CniEnv) -> None:
    cni_env.write_conflist()
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("gone")
    net = await m.setup("podgone", str(pod), namespace="ns", name="gone", uid="u")
    assert cni_env.reservations() == net.ips
    netns.remove(pod)  # e.g. lost at reboot, or removed out of order
    await m.teardown("podgone", str(pod))
    assert cni_env.reservations() == []
    # The veth pair dies with the namespace, but the kernel tears a namespace
    # down in a workqueue after its last reference goes: wait for it.
    for _ in range(100):
        if not veths():
            break
        await asyncio.sleep(0.05)
    assert veths() == []
    await m.teardown("podgone", str(pod))


async def test_teardown_after_restart_uses_the_cached_chain(cni_env: CniEnv) -> None:
    conf = cni_env.write_conflist()
    pod = cni_env.new_pod_ns("r")
    net = await cni_env.manager().setup("podr", str(pod), namespace="ns", name="r", uid="u")
    # The daemon restarts, and meanwhile the operator removed the network.
    conf.unlink()
    again = cni_env.manager()
    assert not again.status()[0]
    assert again.cached_pods() == ["podr"]
    assert again.pod_network("podr") == net
    await again.teardown("podr", str(pod))
    assert cni_env.reservations() == []
    assert veths() == []


async def test_failing_plugin_raises_its_message_and_rolls_back(cni_env: CniEnv) -> None:
    cni_env.fake_plugin(
        "pyctr-fail",
        "#!/bin/sh\n"
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        "  cat >/dev/null\n"
        '  echo \'{"cniVersion":"1.0.0","code":101,"msg":"quota exceeded",'
        '"details":"pool blue is full"}\'\n'
        "  exit 1\n"
        "fi\n"
        "exit 0\n",
    )
    cni_env.write_conflist([{"type": "pyctr-fail"}])
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("f")
    with pytest.raises(CniPluginError) as info:
        await m.setup("podf", str(pod), namespace="ns", name="f", uid="u")
    err = info.value
    assert err.plugin == "pyctr-fail" and err.command == "ADD"
    assert err.cni_code == 101
    text = str(err)
    assert "quota exceeded" in text and "pool blue is full" in text and "pyctr-fail" in text
    # bridge had already made a veth and taken an IP: the rollback undid both.
    assert veths() == []
    assert cni_env.reservations() == []
    assert addresses(pod) == []
    assert m.cached_pods() == []
    await m.teardown("podf", str(pod))  # what the caller does next: fine


async def test_plugin_without_json_error_and_hanging_plugin(cni_env: CniEnv) -> None:
    cni_env.fake_plugin("pyctr-crash", "#!/bin/sh\necho 'panic: something broke' >&2\nexit 2\n")
    cni_env.write_conflist([{"type": "pyctr-crash"}])
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("c")
    with pytest.raises(CniPluginError, match="exited with status 2: panic: something broke"):
        await m.setup("podc", str(pod), namespace="ns", name="c", uid="u")
    # The crashing plugin's DEL (the first, in reverse order) failed too, and
    # per the spec DEL stops there: bridge's veth and IP stay, and so does the
    # cache entry, for the caller's retry.
    assert m.cached_pods() == ["podc"]
    assert len(veths()) == 1 and len(cni_env.reservations()) == 1

    # Hangs, with a child of its own: the timeout must end both.
    cni_env.fake_plugin(
        "pyctr-crash",
        '#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then sleep 60 & exec sleep 61; fi\nexit 0\n',
    )
    await m.teardown("podc", str(pod))  # the retry now succeeds
    assert m.cached_pods() == []
    assert veths() == [] and cni_env.reservations() == []

    m = cni_env.manager(timeout=0.5)
    with pytest.raises(CniPluginError, match=r"pyctr-crash failed on ADD: timed out after 0.5s"):
        await m.setup("podh", str(pod), namespace="ns", name="h", uid="u")
    # The sleeper was killed (the leak check would see it), the rest undone.
    assert veths() == [] and cni_env.reservations() == []
    assert m.cached_pods() == []


async def test_plugins_get_the_spec_environment_and_config(cni_env: CniEnv) -> None:
    record = cni_env.root / "calls.jsonl"
    cni_env.fake_plugin(
        "pyctr-spy",
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "conf = json.load(sys.stdin)\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('CNI_')}\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'env': env, 'conf': conf}) + '\\n')\n"
        "if env['CNI_COMMAND'] == 'ADD':\n"
        "    json.dump(conf['prevResult'], sys.stdout)\n",
    )
    cni_env.write_conflist(
        [{"type": "pyctr-spy", "capabilities": {"portMappings": True, "bandwidth": True}}],
        version="0.4.0",
        # Debian's portmap 1.1.1 fails CHECK when it mapped IPv4 ports only
        # (it looks for IPv6 rules too: containernetworking/plugins#819).
        portmap=False,
    )
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("s")
    mappings = [PortMapping(8080, 18080), PortMapping(53, 5353, "UDP", "127.0.0.1")]
    mappings.append(PortMapping(9090, 0))  # no host port: not passed on
    net = await m.setup("pods", str(pod), namespace="kube-system", name="s", uid="u-1",
                        port_mappings=mappings)  # fmt: skip
    assert net.ips and ipaddress.ip_address(net.ips[0]) in cni_env.subnet
    add = json.loads(record.read_text().splitlines()[0])
    env, conf = add["env"], add["conf"]
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "pods"
    assert env["CNI_NETNS"] == str(pod)
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == cni_env.bin_path
    assert env["CNI_ARGS"].split(";") == [
        "IgnoreUnknown=1",
        "K8S_POD_NAMESPACE=kube-system",
        "K8S_POD_NAME=s",
        "K8S_POD_INFRA_CONTAINER_ID=pods",
        "K8S_POD_UID=u-1",
    ]
    assert conf["name"] == cni_env.network and conf["cniVersion"] == "0.4.0"
    # Only capabilities the plugin declared and the runtime has are passed.
    assert conf["runtimeConfig"] == {
        "portMappings": [
            {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]
    }
    # prevResult chains through: the bridge's result, in 0.4.0 form.
    assert conf["prevResult"]["cniVersion"] == "0.4.0"
    assert any(i.get("sandbox") == str(pod) for i in conf["prevResult"]["interfaces"])

    await m.check("pods", str(pod))  # bridge and the spy both CHECK fine
    await m.teardown("pods", str(pod))
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["env"]["CNI_COMMAND"] for c in calls] == ["ADD", "CHECK", "DEL"]
    delete = calls[2]["conf"]
    assert delete["prevResult"] == net.result  # DEL gets the cached ADD result
    assert delete["runtimeConfig"] == conf["runtimeConfig"]
    assert cni_env.reservations() == [] and veths() == []


async def test_check_reports_a_broken_attachment(cni_env: CniEnv) -> None:
    cni_env.write_conflist()
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("k")
    await m.setup("podk", str(pod), namespace="ns", name="k", uid="u")
    await m.check("podk", str(pod))
    subprocess.run(netns.nsenter(pod, ["ip", "link", "del", "eth0"]), check=True)
    with pytest.raises(CniPluginError, match="bridge failed on CHECK"):
        await m.check("podk", str(pod))
    await m.teardown("podk", str(pod))
    assert cni_env.reservations() == [] and veths() == []


def _serve_once(server: socket.socket, reply: bytes) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(reply + conn.recv(64))


async def _exchange(host: str, port: int, server: socket.socket, via: Path | None = None) -> bytes:
    """Connect to host:port (from `via`'s namespace, else ours) and return
    what the pod's server answered; the server side runs in a thread."""

    def client() -> bytes:
        with socket.create_connection((host, port), timeout=5) as c:
            c.sendall(b"ping")
            return c.recv(64)

    served = asyncio.create_task(asyncio.to_thread(_serve_once, server, b"pong:"))
    try:
        if via is None:
            answer = await asyncio.to_thread(client)
        else:
            answer = await asyncio.to_thread(netns.run_in, via, client)
    except BaseException:
        server.close()  # unblocks accept() so the server thread ends
        await asyncio.gather(served, return_exceptions=True)
        raise
    await served
    return answer


async def test_port_mapping_through_portmap(cni_env: CniEnv) -> None:
    cni_env.write_conflist()
    m = cni_env.manager()
    web, other = cni_env.new_pod_ns("web"), cni_env.new_pod_ns("other")
    await m.setup("podweb", str(web), namespace="ns", name="web", uid="u1",
                  port_mappings=[PortMapping(8080, 18080)])  # fmt: skip
    await m.setup("podother", str(other), namespace="ns", name="other", uid="u2")
    server = netns.run_in(web, lambda: socket.create_server(("0.0.0.0", 8080)))
    server.settimeout(10)
    try:
        # From the host, at the bridge's address and at 127.0.0.1 (portmap sets
        # route_localnet and masquerades localhost), and from another pod at
        # the host's bridge address (hairpin through the host, masqueraded).
        assert await _exchange(cni_env.gateway, 18080, server) == b"pong:ping"
        assert await _exchange("127.0.0.1", 18080, server) == b"pong:ping"
        assert await _exchange(cni_env.gateway, 18080, server, via=other) == b"pong:ping"
    finally:
        server.close()
    await m.teardown("podweb", str(web))
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert "18080" not in nat and '"podweb"' not in nat
    with pytest.raises(OSError):
        socket.create_connection((cni_env.gateway, 18080), timeout=2).close()
    await m.teardown("podother", str(other))
    assert cni_env.reservations() == [] and veths() == []


async def test_the_example_conflist_works(cni_env: CniEnv) -> None:
    example = json.loads(EXAMPLE.read_text())
    # host-local would otherwise keep its reservations under /var/lib/cni.
    example["plugins"][0]["ipam"]["dataDir"] = str(cni_env.data_dir)
    (cni_env.conf_dir / EXAMPLE.name).write_text(json.dumps(example))
    m = cni_env.manager()
    assert m.status()[0]
    pod = cni_env.new_pod_ns("ex")
    net = await m.setup("podex", str(pod), namespace="ns", name="ex", uid="u",
                        port_mappings=[PortMapping(80, 30080)])  # fmt: skip
    assert ipaddress.ip_address(net.ips[0]) in ipaddress.ip_network("10.88.0.0/16")
    bridges = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert [b["ifname"] for b in json.loads(bridges)] == ["pyctr0"]
    assert ping(pod, "10.88.0.1").returncode == 0
    await m.teardown("podex", str(pod))
    assert veths() == []
    assert not any((cni_env.data_dir / "pyctr").glob("10.88.*"))
    shutil.rmtree(cni_env.data_dir / "pyctr", ignore_errors=True)


async def test_setup_refuses_a_second_add_and_a_non_netns(cni_env: CniEnv, tmp_path: Path) -> None:
    cni_env.write_conflist()
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("d")
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(FailedPrecondition, match="is not a network namespace"):
        await m.setup("podd", str(plain), namespace="ns", name="d", uid="u")
    assert m.cached_pods() == []
    net = await m.setup("podd", str(pod), namespace="ns", name="d", uid="u")
    with pytest.raises(FailedPrecondition, match="already has a network attachment"):
        await m.setup("podd", str(pod), namespace="ns", name="d", uid="u")
    assert m.pod_network("podd") == net  # the first attachment is untouched
    await m.teardown("podd", str(pod))
    assert cni_env.reservations() == [] and veths() == []


async def test_teardown_during_setup_waits_and_then_deletes(cni_env: CniEnv) -> None:
    cni_env.fake_plugin(
        "pyctr-slow",
        "#!/usr/bin/env python3\n"
        "import json, os, sys, time\n"
        "conf = json.load(sys.stdin)\n"
        "if os.environ['CNI_COMMAND'] == 'ADD':\n"
        "    time.sleep(0.5)\n"
        "    json.dump(conf['prevResult'], sys.stdout)\n",
    )
    cni_env.write_conflist([{"type": "pyctr-slow"}])
    m = cni_env.manager()
    pod = cni_env.new_pod_ns("w")
    adding = asyncio.create_task(m.setup("podw", str(pod), namespace="ns", name="w", uid="u"))
    await asyncio.sleep(0.2)
    assert len(veths()) == 1  # bridge is done, the slow plugin still running
    await m.teardown("podw", str(pod))
    assert adding.done()
    assert adding.result().ips  # the ADD finished first
    assert cni_env.reservations() == [] and veths() == []
    assert m.cached_pods() == []
