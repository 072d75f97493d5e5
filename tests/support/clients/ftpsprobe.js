// One FTPS session per case with Node's basic-ftp: log in as demo/demo over
// TLS, download a file; one line of result per case on standard output:
//   CASE <name> OK <file contents, first line>
//   CASE <name> FAIL <error code or name>: <message>
//
// NODE_PATH=<dir with basic-ftp> node ftpsprobe.js CA.pem HOST NAME:PORT:explicit|implicit:verify|noverify ...
//
// verify: trust only the given CA (and check the host name, as Node does);
// noverify: accept any certificate.

"use strict";
const fs = require("fs");
const { Writable } = require("stream");
const ftp = require("basic-ftp");

async function fetch(host, port, implicit, ca) {
    const client = new ftp.Client(10000);
    const secureOptions = ca ? { ca: [ca], rejectUnauthorized: true } : { rejectUnauthorized: false };
    try {
        await client.access({
            host,
            port,
            user: "demo",
            password: "demo",
            secure: implicit ? "implicit" : true,
            secureOptions,
        });
        const chunks = [];
        const sink = new Writable({
            write(chunk, encoding, done) {
                chunks.push(chunk);
                done();
            },
        });
        await client.downloadTo(sink, "whoami.txt");
        return Buffer.concat(chunks).toString("ascii").trim();
    } finally {
        client.close();
    }
}

async function main() {
    const [caFile, host, ...cases] = process.argv.slice(2);
    const ca = fs.readFileSync(caFile);
    for (const spec of cases) {
        const [name, port, mode, check] = spec.split(":");
        let result;
        try {
            result = "OK " + (await fetch(host, Number(port), mode === "implicit", check === "verify" ? ca : null));
        } catch (error) {
            result = "FAIL " + (error.code || error.name) + ": " + String(error.message).replace(/\n/g, " ");
        }
        process.stdout.write(`CASE ${name} ${result}\n`);
    }
}

main().catch((error) => {
    process.stderr.write(String(error && error.stack) + "\n");
    process.exit(1);
});
