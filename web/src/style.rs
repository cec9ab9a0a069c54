//! The inline CSS of the dashboard and the report (no stylesheet is ever fetched).

/// Rules both the dashboard and the report use: type, tables, charts, phases, per-class bars.
pub const BASE_CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:22px 0 8px}h3{font-size:15px;margin:16px 0 6px}
a{color:#1f5fbf;text-decoration:none}a:hover{text-decoration:underline}
code,.mono,.url{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.url{word-break:break-all}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0;color:#444}
th,td{padding:5px 9px;border-bottom:1px solid #e4e6ea;text-align:left;vertical-align:top}
thead th{background:#eef0f4;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.empty td{color:#777;font-style:italic}
.panel{background:#fff;border:1px solid #e0e3e8;border-radius:6px;padding:12px 16px;margin:12px 0}
.panel > h2:first-child{margin-top:2px}
.placeholder{color:#666;font-style:italic;padding:12px;background:#fafbfc;border:1px dashed #cfd4dc;border-radius:6px}
.muted{color:#666}
.chart{max-width:100%;height:auto;display:block;background:#fff}
.chart-scroll{overflow-x:auto}
.phase{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e8eaee;color:#333}
.phase-training,.phase-loading{background:#dbeafe;color:#1e40af}
.phase-recovering{background:#fef3c7;color:#92400e}
.phase-pending{background:#eef0f4;color:#374151}
.phase-succeeded{background:#dcfce7;color:#166534}
.phase-failed{background:#fee2e2;color:#991b1b}
.phase-cancelled{background:#e5e7eb;color:#4b5563}
td.f1{white-space:nowrap}
td.f1 .bar{display:inline-block;width:48px;height:8px;margin-right:6px;background:linear-gradient(90deg,#4c78a8 calc(var(--value)*100%),#e8ebf0 0)}
dl.summary{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
dl.summary div{background:#fff;border:1px solid #e0e3e8;border-radius:6px;padding:6px 12px;min-width:110px}
dl.summary dt{font-size:12px;color:#666}dl.summary dd{margin:0;font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}
dl.fields{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}
dl.fields dt{color:#666}dl.fields dd{margin:0}
.error{color:#991b1b;background:#fee2e2;border:1px solid #fecaca;padding:8px 12px;border-radius:6px}
.notice{color:#166534;background:#dcfce7;border:1px solid #bbf7d0;padding:8px 12px;border-radius:6px}
"#;

/// The dashboard's additions: the top bar, forms, the jobs table, sortable headers.
pub const DASHBOARD_CSS: &str = r#"
.topbar{display:flex;align-items:center;justify-content:space-between;gap:16px;background:#1d2330;color:#e8ebf0;padding:8px 20px}
.topbar nav{display:flex;gap:4px;align-items:center}
.topbar nav a{color:#c9d1dd;padding:6px 10px;border-radius:4px}
.topbar nav a:hover{background:#2c3445;text-decoration:none}
.topbar nav a[aria-current=page]{background:#39445a;color:#fff}
.topbar .brand{font-weight:700;color:#fff;margin-right:12px}
.viewer{display:flex;align-items:center;gap:8px;font-size:13px}
.viewer-role{background:#39445a;border-radius:10px;padding:1px 8px;font-size:12px}
.viewer form{margin:0}
button,input,select{font:inherit}
button{background:#1f5fbf;color:#fff;border:0;border-radius:4px;padding:5px 12px;cursor:pointer}
button:hover{background:#174a96}
.topbar button{background:#39445a}
input[type=text],input[type=search],input[type=password],select{border:1px solid #c5cbd5;border-radius:4px;padding:5px 8px;background:#fff}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:end;margin:10px 0}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555;gap:2px}
form.promote{display:flex;gap:6px;margin:0}
form.promote input[type=text]{width:110px}
table.sortable th[data-sort-key]{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" ▲";font-size:10px}
table.sortable th[aria-sort=descending]::after{content:" ▼";font-size:10px}
progress{width:90px;height:10px;vertical-align:middle}
.live-summary{display:flex;flex-wrap:wrap;gap:14px;align-items:center}
.login{max-width:380px;margin:80px auto;background:#fff;border:1px solid #e0e3e8;border-radius:8px;padding:24px}
.login label{display:block;margin:12px 0 4px;font-weight:600}
.login input[type=password]{width:100%}
.login button{margin-top:14px;width:100%;padding:8px}
.alias{display:inline-block;background:#ede9fe;color:#5b21b6;border-radius:10px;padding:0 8px;font-size:12px;margin-right:4px}
"#;

/// The report's additions: a title block, thumbnails, and print rules.
pub const REPORT_CSS: &str = r#"
body{background:#fff}
header.report-header{border-bottom:2px solid #1d2330;padding-bottom:8px;margin-bottom:8px}
section{margin:18px 0;padding-top:4px;border-top:1px solid #e4e6ea}
section > h2{margin-top:10px}
.thumbnails{display:flex;flex-wrap:wrap;gap:10px}
figure.thumbnail{margin:0;width:140px;background:#fafbfc;border:1px solid #e0e3e8;border-radius:4px;padding:6px;text-align:center}
figure.thumbnail img{object-fit:contain;width:64px;height:64px;display:block;margin:0 auto 4px;background:#000}
figure.thumbnail figcaption{font-size:11px;line-height:1.3;word-break:break-word}
footer{margin-top:28px;padding-top:10px;border-top:1px solid #ccc;color:#555;font-size:12px}
ul.examples{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
@media print{
  body{font-size:11px;background:#fff}
  main{max-width:none;padding:0}
  section{break-inside:avoid-page}
  section#per-class,section#data{break-inside:auto}
  table{font-size:10.5px}
  tr,figure{break-inside:avoid}
  .chart{max-width:100%}
  a{color:inherit}
}
@page{margin:14mm}
"#;
