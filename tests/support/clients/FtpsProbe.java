// One FTPS session per case with Apache Commons Net's FTPSClient: log in as
// demo/demo, PBSZ 0, PROT P, passive mode, download a file; one line of
// result per case on standard output:
//   CASE <name> OK <file contents, first line>
//   CASE <name> FAIL <exception class>: <message>
//
// java -cp commons-net.jar:. FtpsProbe CA.pem HOST NAME:PORT:explicit|implicit:verify|noverify ...
//
// verify: trust only the given CA and check the host name (endpoint
// identification); noverify: accept any certificate.

import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;

import org.apache.commons.net.ftp.FTP;
import org.apache.commons.net.ftp.FTPReply;
import org.apache.commons.net.ftp.FTPSClient;
import org.apache.commons.net.util.TrustManagerUtils;

public class FtpsProbe {
    public static void main(String[] args) throws Exception {
        TrustManager trustCA = trusting(args[0]);
        String host = args[1];
        for (int i = 2; i < args.length; i++) {
            String[] parts = args[i].split(":");
            String name = parts[0];
            int port = Integer.parseInt(parts[1]);
            boolean implicit = parts[2].equals("implicit");
            boolean verify = parts[3].equals("verify");
            String result;
            try {
                result = "OK " + fetch(host, port, implicit, verify ? trustCA : null);
            } catch (Exception e) {
                result = "FAIL " + e.getClass().getName() + ": " + String.valueOf(e.getMessage()).replace('\n', ' ');
            }
            System.out.println("CASE " + name + " " + result);
            System.out.flush();
        }
    }

    static TrustManager trusting(String caFile) throws Exception {
        CertificateFactory factory = CertificateFactory.getInstance("X.509");
        Certificate ca;
        try (InputStream in = new FileInputStream(caFile)) {
            ca = factory.generateCertificate(in);
        }
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        store.setCertificateEntry("ftpproxy-development-ca", ca);
        TrustManagerFactory managers = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        managers.init(store);
        return managers.getTrustManagers()[0];
    }

    static String fetch(String host, int port, boolean implicit, TrustManager trust) throws Exception {
        FTPSClient ftps = new FTPSClient("TLS", implicit);
        ftps.setConnectTimeout(10000);
        ftps.setDefaultTimeout(10000);
        if (trust != null) {
            ftps.setTrustManager(trust);
            ftps.setEndpointCheckingEnabled(true);
        } else {
            ftps.setTrustManager(TrustManagerUtils.getAcceptAllTrustManager());
            ftps.setEndpointCheckingEnabled(false);
        }
        try {
            ftps.connect(host, port);
            if (!FTPReply.isPositiveCompletion(ftps.getReplyCode())) {
                throw new IllegalStateException("greeting " + ftps.getReplyString().trim());
            }
            if (!ftps.login("demo", "demo")) {
                throw new IllegalStateException("login " + ftps.getReplyString().trim());
            }
            ftps.execPBSZ(0);
            ftps.execPROT("P");
            ftps.enterLocalPassiveMode();
            ftps.setFileType(FTP.BINARY_FILE_TYPE);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            if (!ftps.retrieveFile("whoami.txt", out)) {
                throw new IllegalStateException("RETR " + ftps.getReplyString().trim());
            }
            ftps.logout();
            return out.toString("US-ASCII").trim();
        } finally {
            if (ftps.isConnected()) {
                try {
                    ftps.disconnect();
                } catch (Exception ignored) {
                }
            }
        }
    }
}
