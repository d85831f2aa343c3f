"""The apps' own settings (appEnv, appSecrets): checked with precise messages, written to
the app servers' .env so that the app's own loader reads every value back exactly, pushed
(never in first boot or the bundle), and appSecrets' values secret wherever they travel.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess

import pulumi
import pytest

import cloudinit
import mockcloud
from cloudinit import app_server
from components import app_server_pool
from model import conventions, parsers
from model.settings import Secret, Settings, SettingsError
from program_run import run_main
from stack_graph import COMMAND, droplets, of_type, readable_text, strings_outside_secrets

ROOT = mockcloud.ROOT
LOADER = ROOT / "example-app" / "lib" / "env.js"
SECRET = "sk_live_XXXXSECRETXXXX 'q' \"dq\" $HOME #hash"
# What survives as is: spaces inside and at both ends, both quotes, $, #, =, \, `, unicode, empty.
AWKWARD = {
    "GREETING": "  hello, 'world' \"twice\"  ",
    "PRICE": "$5 # not a comment",
    "EXPANDS_NOTHING": "${HOME} $(id) `id` \\n \\",
    "EQUALS": "a=b==c",
    "UNICODE": "é ✓ 日本",
    "EMPTY": "",
}


def problems_with(**overrides) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        mockcloud.stack_settings("staging", **overrides)
    return raised.value.problems


def node() -> str:
    found = shutil.which("node")
    if not found:
        pytest.fail("node is missing: apt-get install nodejs")  # never a silent skip
    return found


def loaded(env_text: str, tmp_path, names) -> dict[str, str | None]:
    """The variables example-app/lib/env.js puts in process.env from this .env text."""
    path = tmp_path / ".env"
    path.write_bytes(env_text.encode())
    script = ("const { loadEnvFile } = require(process.argv[1]); loadEnvFile(process.argv[2]);"
              "const names = JSON.parse(process.argv[3]);"
              "console.log(JSON.stringify(Object.fromEntries(names.map(n => [n, process.env[n] ?? null]))));")
    env = {"PATH": "/usr/bin:/bin"}  # none of the names set beforehand: the loader leaves those alone
    result = subprocess.run([node(), "-e", script, str(LOADER), str(path), json.dumps(sorted(names))],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- Checked -------------------------------------------------------------------------------


def test_both_are_empty_by_default_and_typed_values_are_their_text():
    settings = mockcloud.stack_settings("production")
    assert settings.app_env == {} and settings.app_secrets == {}
    # Staging asks the example app to name the answering server (README, "Security").
    assert mockcloud.stack_settings("staging").app_env == {"SHOW_SERVER_NAME": "true"}
    settings = mockcloud.stack_settings("staging", appEnv={"WORKERS": 4, "DEBUG": False, "NAME": "x"})
    assert settings.app_env == {"DEBUG": "false", "NAME": "x", "WORKERS": "4"}


def test_appenv_set_as_a_secret_is_refused_unshown_pointing_to_appsecrets():
    config = {**mockcloud.stack_file_config("staging"), "appEnv": json.dumps({"STRIPE_KEY": SECRET})}
    with pytest.raises(SettingsError) as raised:
        Settings.from_config("staging", config, secret_keys={"appEnv"})
    (problem,) = raised.value.problems
    assert problem.startswith("appEnv: (the value hidden: set as a secret) is not allowed as a secret: its values are "
                              "written in plain text"), problem
    assert "a secret the apps read goes in appSecrets (`pulumi config set --secret --path 'appSecrets.NAME' ...`)" \
        in problem and SECRET not in problem


def test_a_plain_setting_set_as_a_secret_is_refused_unshown_even_when_also_invalid():
    config = {**mockcloud.stack_file_config("staging"), "acmeEmail": "not-an-address", "appEnv": {"X": "x\ny"}}
    with pytest.raises(SettingsError) as raised:
        Settings.from_config("staging", config, secret_keys={"acmeEmail", "appEnv"})
    problems = raised.value.problems
    assert problems[0] == ("acmeEmail: (the value hidden: set as a secret) is not allowed as a secret: the program "
                           "writes it in plain text (on the droplets, in the stack's state); set it without --secret "
                           "(`pulumi config set acmeEmail ...`)")
    assert problems[1].startswith("acmeEmail: (a value hidden: a secret) is not allowed: an e-mail address"), problems
    assert problems[3].startswith("appEnv.X: (the value hidden: a secret) is not allowed: a single line"), problems
    assert "not-an-address" not in str(problems) and "x\\ny" not in str(problems)


def test_as_the_cli_hands_a_map_over_json_text():
    config = {**mockcloud.stack_file_config("staging"), "appEnv": json.dumps({"LOG_LEVEL": "info"}),
              "appSecrets": json.dumps({"STRIPE_KEY": SECRET})}
    settings = Settings.from_config("staging", config, secret_keys={"appSecrets"})
    assert settings.app_env == {"LOG_LEVEL": "info"}
    assert settings.app_secrets == {"STRIPE_KEY": Secret(SECRET)}


@pytest.mark.parametrize("name", ["log_level", "1ST", "WITH-DASH", "WITH SPACE", "ÉTÉ", "", "FOO\n"])
def test_a_name_that_is_no_environment_variable_name(name):
    (problem,) = problems_with(appEnv={name: "x"})
    assert problem == (f"appEnv: the name {name!r} is not allowed: an environment variable name: capital letters "
                       "A-Z, digits and _, not starting with a digit")


@pytest.mark.parametrize("name", ["NODE_ENV", "PORT", "PLATFORM_CA_FILE", "PLATFORM_ENV_FILE", "PM2_HOME",
                                  "POSTGRESQL_PASSWORD", "MONGODB_HOST", "REDIS_USER", "RABBITMQ_DATABASE"])
def test_a_name_the_platform_sets_is_refused_in_either(name):
    for key in ("appEnv", "appSecrets"):
        (problem,) = problems_with(**{key: {name: "x"}})
        assert problem.startswith(f"{key}: the name {name!r} is not allowed: a name the platform does not set")
        assert "NODE_ENV, PORT" in problem and "PLATFORM_ or PM2_" in problem


def test_every_name_the_platform_gives_the_apps_is_refused():
    """The reserved names cover what app.env (every engine on), the ecosystem file and the
    apps' unit set: a name added there without being reserved fails here."""
    every = mockcloud.stack_settings("staging", engines=list(conventions.ENGINES), appEnv={})
    text = app_server.app_env("10.0.0.9", dict.fromkeys(every.engines, "pw"), every)
    ecosystem = cloudinit.render("app_server/ecosystem.config.js", **cloudinit.template_context("app", every))
    unit = cloudinit.render("app_server/platform-apps.service", **cloudinit.template_context("app", every))
    import re
    names = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", text, re.M))
    names |= set(re.findall(r"\b([A-Z_][A-Z0-9_]*): ", ecosystem))
    names |= set(re.findall(r"^Environment=([A-Z_][A-Z0-9_]*)=", unit, re.M))
    assert {"NODE_ENV", "POSTGRESQL_PASSWORD", "PORT", "PLATFORM_ENV_FILE", "PM2_HOME"} <= names
    for name in names:
        assert parsers.env_name_problem(name), name


@pytest.mark.parametrize("value, held", [("a\nPORT=1", "a newline"), ("a\rb", "a carriage return"),
                                         ("a\u2028b", "U+2028"), ("a\u2029b", "U+2029"), ("a\0b", "a NUL")])
def test_a_value_of_more_than_one_line_is_refused_shown_for_app_env_hidden_for_app_secrets(value, held):
    (problem,) = problems_with(appEnv={"MOTD": value})
    assert problem == (f"appEnv.MOTD: {value!r} is not allowed: a single line: no newline, carriage return, "
                       f"U+2028, U+2029 or NUL (it holds {held})")
    (problem,) = problems_with(appSecrets={"TOKEN": "XXXXSECRET" + value})
    assert problem.startswith("appSecrets.TOKEN: (the value hidden: a secret) is not allowed: a single line")
    assert "XXXXSECRET" not in problem


@pytest.mark.parametrize("value", [1.5, ["a"], {"a": "b"}, None])
def test_a_value_that_is_no_string(value):
    (problem,) = problems_with(appEnv={"RATE": value})
    assert problem.startswith("appEnv.RATE: ") and problem.endswith(
        "is not allowed: a string (a decimal number, a list or a map is not: quote it)")


def test_sizes_are_limited_per_value_and_per_map():
    limit = parsers.ENV_VALUE_MAX_BYTES
    assert mockcloud.stack_settings("staging", appEnv={"BIG": "x" * limit}).app_env["BIG"] == "x" * limit
    (problem,) = problems_with(appSecrets={"BIG": "é" * (limit // 2 + 1)})  # counted in UTF-8 bytes
    assert problem == f"appSecrets.BIG: (the value hidden: a secret) is not allowed: a string of at most {limit} bytes (UTF-8)"
    many = {f"V{i}": "x" * limit for i in range(parsers.ENV_MAP_MAX_BYTES // limit + 1)}
    (problem,) = problems_with(appEnv=many)
    assert problem.startswith("appEnv: ") and problem.endswith(
        f"with at most {parsers.ENV_MAP_MAX_BYTES} bytes of values in all")


def test_not_a_map_and_every_bad_entry_listed():
    (problem,) = problems_with(appEnv=["LOG_LEVEL=info"])
    assert problem == ("appEnv: '[\"LOG_LEVEL=info\"]' is not allowed: a map of environment variable names to "
                       "strings, such as {LOG_LEVEL: info} (may be empty)")
    assert len(problems_with(appEnv={"bad": "x", "GOOD": "x", "ALSO": "a\nb"})) == 2


def test_a_name_in_both_is_refused():
    (problem,) = problems_with(appEnv={"TOKEN": "a"}, appSecrets={"TOKEN": "b"})
    assert problem == "appSecrets: the name 'TOKEN' is not allowed: a name appEnv does not set too (each variable is set once)"


def test_app_secrets_set_in_plain_text_are_refused_and_never_shown():
    config = {**mockcloud.stack_file_config("staging"), "appSecrets": {"STRIPE_KEY": SECRET}}
    with pytest.raises(SettingsError) as raised:
        Settings.from_config("staging", config)
    (problem,) = raised.value.problems
    assert problem == (
        "appSecrets: (a value hidden: a secret) is not allowed in plain text (Pulumi.staging.yaml would show it): "
        "set it with `pulumi config set --secret --path 'appSecrets.NAME' ...`"
    )
    settings = Settings.from_config("staging", config, secret_keys={"appSecrets"})
    assert settings.app_secrets["STRIPE_KEY"].value == SECRET
    for shown in (str(settings), repr(settings), str(settings.app_secrets)):
        assert "XXXXSECRET" not in shown


# --- The .env, read back by the app's loader --------------------------------------------


@pytest.mark.sandbox  # runs node
def test_the_apps_loader_reads_every_value_back_exactly(tmp_path):
    settings = mockcloud.stack_settings("staging", appEnv=AWKWARD, appSecrets={"STRIPE_KEY": SECRET})
    text = app_server.app_env("10.0.0.9", dict.fromkeys(settings.engines, "pw"), settings, {"STRIPE_KEY": SECRET})
    expected = {**AWKWARD, "STRIPE_KEY": SECRET, "POSTGRESQL_HOST": "10.0.0.9", "NODE_ENV": "production"}
    assert loaded(text, tmp_path, expected) == expected


@pytest.mark.sandbox  # runs node
def test_the_refused_characters_are_those_the_loader_cannot_read_back(tmp_path):
    """Why a value is one line without \\r, U+2028, U+2029: the loader loses or cuts it."""
    for char in ("\n", "\r", "\u2028", "\u2029"):
        value = f"one{char}two"
        assert loaded(f"X={value}\n", tmp_path, ["X"])["X"] != value, repr(char)


# --- Pushed, secret, nowhere else -------------------------------------------------------


@pytest.fixture(scope="module")
def with_app_settings() -> mockcloud.Deployment:
    # No engine: no password makes the .env secret; appSecrets alone must.
    return mockcloud.deploy(mockcloud.stack_settings(
        "staging", engines=[], appEnv={"LOG_LEVEL": "debug"}, appSecrets={"STRIPE_KEY": SECRET}))


def env_pushes(deployment) -> list[mockcloud.Resource]:
    return [r for r in of_type(deployment, COMMAND) if r.state["create"].split()[-1] == "env"]


def test_every_app_server_gets_both_by_its_env_push_whose_input_is_secret(with_app_settings):
    pushes = env_pushes(with_app_settings)
    assert len(pushes) == with_app_settings.settings.app_server_count
    for push in pushes:
        assert mockcloud.is_secret(push.inputs["stdin"]), push.name
        env = json.loads(mockcloud.plain(push.inputs["stdin"]))[".env"]
        assert "\nLOG_LEVEL=debug\n" in env and f"\nSTRIPE_KEY={SECRET}\n" in env
        triggers = push.inputs["triggers"]  # a digest of the .env is no plain input either
        assert mockcloud.is_secret(triggers) or mockcloud.is_secret(triggers[0]), push.name


def test_app_secrets_are_a_secret_output_of_their_own():
    """The .env is secret for the engines' passwords too: this does not lean on that."""
    settings = mockcloud.stack_settings("staging", appSecrets={"STRIPE_KEY": SECRET})
    pulumi.runtime.set_mocks(mockcloud.ProviderMocks(settings.vpc_ip_range), project=conventions.PROJECT,
                             stack="staging", preview=False)
    seen: dict = {}

    @pulumi.runtime.test
    def check():
        values = app_server_pool.app_secret_values(settings)

        async def secrecy():
            seen["secret"] = await values.is_secret()

        return pulumi.Output.all(values.apply(lambda v: seen.update(values=v)), secrecy())

    check()
    assert seen == {"secret": True, "values": {"STRIPE_KEY": SECRET}}


def test_the_secret_is_in_no_plaintext_input_output_user_data_or_bundle(with_app_settings):
    for r in with_app_settings.resources:
        assert "XXXXSECRET" not in "\n".join(strings_outside_secrets(r.inputs)), f"{r.type} {r.name}"
    plain_outputs = {k: v for k, v in with_app_settings.outputs.items() if not with_app_settings.secret_outputs[k]}
    assert "XXXXSECRET" not in json.dumps(plain_outputs)
    for d in droplets(with_app_settings):
        assert "XXXXSECRET" not in readable_text(d.state["userData"]), d.name
    for push in [r for r in of_type(with_app_settings, COMMAND) if r.name.endswith("-bundle-push")]:
        text = gzip.decompress(base64.b64decode(mockcloud.plain(push.inputs["stdin"]))).decode()
        assert "XXXXSECRET" not in text and "LOG_LEVEL" not in text, push.name


def test_the_release_archive_holds_app_env_and_only_the_names_of_app_secrets():
    deployment = mockcloud.deploy(mockcloud.stack_settings(
        "production", appEnv={"LOG_LEVEL": "debug"}, appSecrets={"STRIPE_KEY": SECRET}))
    env = deployment.outputs["release_archive"]["configuration"]["app.env.template"]
    assert "\nLOG_LEVEL=debug\n" in env and f"\nSTRIPE_KEY={app_server.SECRET_PLACEHOLDER}\n" in env
    assert "XXXXSECRET" not in env


def test_a_change_to_either_runs_only_the_env_pushes_again(with_app_settings):
    """Changed on a running stack: only the .env pushes run (their then-step reloads the
    apps); no bundle, no droplet, no other push."""
    settings = mockcloud.stack_settings("staging", engines=[], appEnv={"LOG_LEVEL": "info"},
                                        appSecrets={"STRIPE_KEY": SECRET + "2"})
    after = mockcloud.deploy(settings, previous=with_app_settings)
    changed = sorted(r.name for r in after.resources if not r.unchanged and not r.type.startswith("pulumi:"))
    assert changed == sorted(r.name for r in env_pushes(after))
    then = json.loads(cloudinit.push_table(conventions.APP_SERVER, settings))["env"]["then"]
    assert then == [["sh", "-c", f"! systemctl is-active --quiet {conventions.APPS_UNIT} || "
                                 f"systemctl reload {conventions.APPS_UNIT}"]]


# --- An entry of appSecrets set without --secret -----------------------------------------


def test_the_program_refuses_an_entry_the_stack_file_holds_in_plain_text(monkeypatch, tmp_path):
    """Pulumi hands the program the whole map as secret once one entry is; the stack file
    tells which entries were set without --secret."""
    import yaml

    entries = {"STRIPE_KEY": {"secure": "v1:AAAA"}, "SET_PLAIN": "XXXXSECRETplain"}
    stack_file = tmp_path / "Pulumi.staging.yaml"
    stack_file.write_text(yaml.safe_dump({"config": {f"{conventions.PROJECT}:appSecrets": entries}}))
    monkeypatch.chdir(tmp_path)  # Pulumi runs the program beside its stack files
    config = {**mockcloud.stack_file_config("staging"), "appSecrets": {"STRIPE_KEY": SECRET, "SET_PLAIN": "XXXXSECRETplain"}}
    resources, stop = run_main(monkeypatch, config, secret=("appSecrets",))
    assert stop is not None and resources == []
    assert str(stop.code).endswith(
        "  - appSecrets.SET_PLAIN: (the value hidden: a secret) is not allowed in plain text (Pulumi.staging.yaml "
        "shows it): set it with `pulumi config set --secret --path 'appSecrets.SET_PLAIN' ...`")
    assert "STRIPE_KEY" not in str(stop.code) and "XXXXSECRET" not in str(stop.code)
    entries["SET_PLAIN"] = {"secure": "v1:BBBB"}
    stack_file.write_text(yaml.safe_dump({"config": {f"{conventions.PROJECT}:appSecrets": entries}}))
    resources, stop = run_main(monkeypatch, config, secret=("appSecrets",))
    assert stop is None and resources
