// Screen texts for shoppers (self-checkout, customer display): English and German.
import { addStrings } from "/static/common.js";

addStrings("en", {
  welcome: "Welcome", start: "Touch here or scan an item to start", language: "Language",
  cart: "Your items", total: "Total", items: "Items", pay: "Pay", help: "Call for help", lookup: "Item without barcode",
  lookup_title: "Choose your item", back: "Back", weigh_title: "Put {name} on the scale", weigh: "Weigh and add",
  weighing: "Weighing…", empty: "Scan your first item", card: "Pay by card", cash: "Pay with cash",
  pay_title: "How would you like to pay?", card_wait: "Follow the instructions on the card terminal",
  declined: "The payment did not go through: {message}", receipt_title: "Would you like a receipt?",
  print: "Print receipt", digital: "Digital receipt", none: "No receipt", thanks: "Thank you for shopping with us!",
  scan_qr: "Scan the code for your receipt", attendant: "An attendant is on the way",
  attendant_why: "Age-restricted item: a member of staff will check your ID.", help_called: "Help is on the way",
  staff_id: "Staff ID", pin: "PIN", approve: "Approve", badge: "Use badge", cancel: "Cancel", staff_only: "Staff only",
  unpaired: "This screen is not paired with the till. Restart the kiosk.", error: "Something went wrong: {message}",
  not_found: "We could not find that item. Please ask for help.", new_sale: "Start again", remove: "Remove",
  please_pay: "Please pay", paid: "Paid", change: "Change", promotions: "Today's offers", offline: "Reconnecting…",
  by_weight: "per kg",
});

addStrings("de", {
  welcome: "Willkommen", start: "Hier tippen oder einen Artikel scannen", language: "Sprache",
  cart: "Ihre Artikel", total: "Summe", items: "Artikel", pay: "Bezahlen", help: "Hilfe rufen", lookup: "Artikel ohne Barcode",
  lookup_title: "Artikel auswählen", back: "Zurück", weigh_title: "{name} auf die Waage legen", weigh: "Wiegen und hinzufügen",
  weighing: "Wird gewogen…", empty: "Scannen Sie Ihren ersten Artikel", card: "Mit Karte zahlen", cash: "Bar zahlen",
  pay_title: "Wie möchten Sie bezahlen?", card_wait: "Bitte folgen Sie den Anweisungen am Kartenterminal",
  declined: "Die Zahlung wurde nicht ausgeführt: {message}", receipt_title: "Möchten Sie einen Beleg?",
  print: "Beleg drucken", digital: "Digitaler Beleg", none: "Kein Beleg", thanks: "Vielen Dank für Ihren Einkauf!",
  scan_qr: "Code scannen für Ihren Beleg", attendant: "Eine Mitarbeiterin oder ein Mitarbeiter kommt gleich",
  attendant_why: "Altersbeschränkter Artikel: Das Personal prüft Ihren Ausweis.", help_called: "Hilfe ist unterwegs",
  staff_id: "Personalnummer", pin: "PIN", approve: "Freigeben", badge: "Mitarbeiterkarte", cancel: "Abbrechen",
  staff_only: "Nur für Personal", unpaired: "Dieser Bildschirm ist nicht mit der Kasse verbunden. Bitte Kiosk neu starten.",
  error: "Ein Fehler ist aufgetreten: {message}", not_found: "Artikel nicht gefunden. Bitte rufen Sie Hilfe.",
  new_sale: "Neu beginnen", remove: "Entfernen", please_pay: "Bitte bezahlen", paid: "Bezahlt", change: "Rückgeld",
  promotions: "Angebote des Tages", offline: "Verbindung wird hergestellt…", by_weight: "pro kg",
});
