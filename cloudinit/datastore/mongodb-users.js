// Run by provisioning with mongosh over TLS on loopback: creates (or sets the password
// of) MongoDB's user administrator and the app's user. Passwords come from the
// environment (the secrets push), never from this file.
const adminPassword = process.env.MONGODB_ADMIN_PASSWORD;
const appPassword = process.env.MONGODB_PASSWORD;
if (!adminPassword || !appPassword) {
  throw new Error("MONGODB_ADMIN_PASSWORD and MONGODB_PASSWORD must be set");
}

const admin = db.getSiblingDB("admin");
let authenticated = false;
try {
  authenticated = admin.auth("{{ c.ENGINE_ADMIN_USER }}", adminPassword).ok === 1;
} catch (e) {
  authenticated = false;
}
if (!authenticated) {
  // First run: no user yet, and the localhost exception allows creating the first one.
  admin.createUser({
    user: "{{ c.ENGINE_ADMIN_USER }}",
    pwd: adminPassword,
    roles: [{ role: "userAdminAnyDatabase", db: "admin" }],
  });
  admin.auth("{{ c.ENGINE_ADMIN_USER }}", adminPassword);
}

// The app's user reads, writes and indexes its database and nothing else: not dbOwner,
// whose userAdmin would let an app server's intruder add users (outliving a password
// change) or change this one's password (locking the other app servers out). The roles
// are set again on an existing user, so a stack made with dbOwner loses it.
const appDb = db.getSiblingDB("{{ c.ENGINE_APP_DATABASE }}");
const appRoles = [
  { role: "readWrite", db: "{{ c.ENGINE_APP_DATABASE }}" },
  { role: "dbAdmin", db: "{{ c.ENGINE_APP_DATABASE }}" },
];
if (appDb.getUser("{{ c.ENGINE_APP_USER }}") === null) {
  appDb.createUser({ user: "{{ c.ENGINE_APP_USER }}", pwd: appPassword, roles: appRoles });
} else {
  appDb.updateUser("{{ c.ENGINE_APP_USER }}", { pwd: appPassword, roles: appRoles });
}
